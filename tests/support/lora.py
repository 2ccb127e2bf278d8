"""The reference for LoRA tests: greedy token ids from transformers + peft, in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def peft_greedy(model_dir: str, prompt: str, tokens: int,
                adapters: dict[str, Path]) -> dict[str | None, list[int]]:
    """Greedy ids of ``prompt`` (``tokens`` of them): the base model under ``None``, each
    adapter under its name (float32, as the runtime's CPU default)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(prompt, return_tensors="pt").input_ids

    def greedy(model: Any) -> list[int]:
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=tokens, do_sample=False)
        return [int(t) for t in out[0, ids.shape[1]:]]

    def base() -> Any:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    refs: dict[str | None, list[int]] = {None: greedy(base())}
    for name, path in adapters.items():
        refs[name] = greedy(PeftModel.from_pretrained(base(), str(path)))
    return refs
