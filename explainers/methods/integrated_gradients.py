"""Integrated gradients on the input embeddings (white box), with Captum and transformers.

Why: a gradient method sees how every feature acts inside the model in ``n_steps`` forward and
backward passes, whatever the number of features. It needs the weights, so it loads the model
folder the predictor serves (``--model_dir``) with transformers in float32 on this process's
CPU, once, on first use. The path runs from a baseline in which each feature's tokens are
replaced by ``baseline_token`` (template and response tokens unchanged, so they get no
attribution) to the real prompt; token attributions are summed over the embedding dimension
and over the tokens of each feature.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from explainers.errors import ClientError
from explainers.methods.base import Attribution, AttributionTask, ExplanationMethod
from explainers.request import int_param

DEFAULT_STEPS = 16
DEFAULT_BASELINE_TOKEN = " "


class IntegratedGradients(ExplanationMethod):
    """Captum ``LayerIntegratedGradients`` on ``model.model.embed_tokens`` of the served model."""

    name = "integrated_gradients"
    description = ("White box: integrated gradients on the input embeddings (Captum, "
                   "transformers, float32), summed per feature.")
    params_doc = {
        "n_steps": f"integration steps (default {DEFAULT_STEPS}); the cost",
        "baseline_token": f"text of the token features are replaced by on the baseline path "
                          f"(default {DEFAULT_BASELINE_TOKEN!r})",
        "internal_batch_size": "steps per forward pass (default: n_steps, capped by the "
                               "server's --ig_batch_tokens)",
    }

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._run_lock = asyncio.Lock()

    def cost(self, num_features: int, params: dict[str, Any]) -> int:
        return int_param(params, "n_steps", DEFAULT_STEPS, minimum=2, maximum=512)

    def _load(self) -> Any:
        with self._load_lock:
            if self._model is None:
                import torch
                from transformers import AutoModelForCausalLM

                model = AutoModelForCausalLM.from_pretrained(
                    self.settings.model_dir, dtype=torch.float32)
                model.eval()
                self._model = model
        return self._model

    def step_batch(self, seq_len: int, params: dict[str, Any]) -> int:
        """Steps per forward/backward pass: what the request asks (default: all of them),
        capped so one pass holds at most ``ig_batch_tokens`` tokens.

        Why: all ``n_steps`` at once over a long prompt needs tens of GB (activations kept for
        the backward pass, and the response logits, grow with steps x tokens). Captum sums the
        chunks, so the attributions do not depend on the chunk size.
        """
        n_steps = self.cost(0, params)
        asked = int_param(params, "internal_batch_size", n_steps, minimum=1, maximum=n_steps)
        limit = self.settings.ig_batch_tokens
        if seq_len > limit:
            raise ClientError(f"integrated_gradients runs the whole sequence through the model "
                              f"({seq_len} tokens: prompt and response), more than the "
                              f"{limit} tokens one pass may hold (--ig_batch_tokens); use a "
                              f"shorter prompt or a black-box method")
        return min(asked, limit // seq_len)

    async def explain(self, task: AttributionTask) -> Attribution:
        n_steps = self.cost(task.num_features, task.params)
        seq_len = len(task.prompt.ids) + len(task.response_ids)
        batch = self.step_batch(seq_len, task.params)
        text = task.params.get("baseline_token", DEFAULT_BASELINE_TOKEN)
        if not isinstance(text, str):
            raise ClientError("params.baseline_token must be a string")
        ids = self.settings.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ClientError(f"params.baseline_token {text!r} is {len(ids)} tokens, not one")
        async with self._run_lock:  # one IG at a time: it uses every core
            token_scores = await asyncio.to_thread(self._attribute, task, ids[0], n_steps,
                                                   batch)
        task.stats.forward_passes += n_steps
        task.stats.tokens_scored += n_steps * seq_len
        seq_attr = [float(sum(token_scores[p] for p in f.token_indices))
                    for f in task.prompt.features]
        return Attribution(seq_attr=seq_attr, extra={
            "n_steps": n_steps, "internal_batch_size": batch,
            "step_passes": -(-n_steps // batch), "sequence_tokens": seq_len})

    def _attribute(self, task: AttributionTask, baseline_id: int, n_steps: int,
                   batch: int) -> list[float]:
        import torch
        from captum.attr import LayerIntegratedGradients

        model = self._load()
        prompt = task.prompt
        full = prompt.ids + task.response_ids
        n_prompt, n_resp = len(prompt.ids), len(task.response_ids)
        feature_pos = {p for f in prompt.features for p in f.token_indices}
        baseline = [baseline_id if i in feature_pos else t for i, t in enumerate(full)]
        targets = torch.tensor(task.response_ids)

        def forward(input_ids: torch.Tensor) -> torch.Tensor:
            hidden = model.model(input_ids=input_ids).last_hidden_state
            # the hidden state at position p predicts token p + 1; project only the positions
            # that predict response tokens (the vocabulary projection dominates the cost)
            logits = model.lm_head(hidden[:, n_prompt - 1:n_prompt - 1 + n_resp, :])
            logp = torch.log_softmax(logits, dim=-1)
            picked = logp.gather(-1, targets.expand(input_ids.shape[0], -1).unsqueeze(-1))
            return picked.squeeze(-1).sum(dim=-1)

        lig = LayerIntegratedGradients(forward, model.model.embed_tokens)
        with torch.enable_grad():
            attrs = lig.attribute(
                torch.tensor([full]), baselines=torch.tensor([baseline]), n_steps=n_steps,
                internal_batch_size=batch,
            )
        return attrs.sum(dim=-1)[0].tolist()
