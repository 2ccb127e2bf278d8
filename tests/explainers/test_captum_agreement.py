"""Leave-one-out through the explainer (vLLM prompt log-probs, token-id removal) agrees with
Captum's ``LLMAttribution(FeatureAblation)`` computed in-process with transformers on the same
model, features and response.

Captum scores each perturbation with one forward pass over prompt + response
(``forward_in_tokens=False``), the quantity the explainer gets from vLLM's prompt log-probs.
(Its token-by-token mode without the KV cache gives the same numbers, only slower. With the
cache, its default, Captum 0.9 with transformers 5.19 scores the unperturbed response at
log p = -9.4 where a plain forward pass and vLLM give -4.05: 0.13 / 6.74 / 7.06 instead of
-0.65 / 5.14 / 4.23 on the first case, so that mode is not a reference here.)

Tolerance: vLLM (float32, CPU kernels) and transformers (float32, eager) compute the same
log-probabilities up to kernel rounding; each score is a difference of two sums of a handful of
token log-probs, so we allow 0.05 nats absolute plus 2 % of the score.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import FeatureAblation, LLMAttribution, TextTemplateInput
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.explainers.conftest import explain

pytestmark = pytest.mark.slow

ABS_TOL, REL_TOL = 0.05, 0.02

CASES = [
    ("Alice lives in Paris. Bob lives in Rome. Where does Bob live?", "Bob lives in Rome.",
     "sentence"),
    ("The cat sat on the warm mat. What did the cat sit on?", "The cat sat on the mat.",
     "word"),
]


@pytest.fixture(scope="module")
def hf_model(model_dir: str):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def captum_template(tokenizer, content: str, features: list[dict]) -> tuple[str, list[str]]:
    """The chat-rendered prompt as a Captum template with one slot per explainer feature.

    Each slot's value carries the whitespace before the feature, as the feature's tokens do
    (" Bob" belongs to "Bob"), so removing a value removes exactly the feature's tokens.
    """
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                             tokenize=False, add_generation_prompt=True)
    start = rendered.index(content)
    prefix, suffix = rendered[:start], rendered[start + len(content):]
    values, cursor = [], 0
    for f in features:
        a, b = f["char_span"]
        values.append(content[cursor:b])
        cursor = b
    rest = content[cursor:]
    esc = lambda s: s.replace("{", "{{").replace("}", "}}")  # noqa: E731
    return esc(prefix) + "{}" * len(values) + esc(rest) + esc(suffix), values


@pytest.mark.parametrize("content,response,granularity", CASES)
def test_leave_one_out_matches_captum_feature_ablation(explainer, hf_model, content: str,
                                                       response: str,
                                                       granularity: str) -> None:
    body = {"messages": [{"role": "user", "content": content}], "response": response,
            "method": "leave_one_out", "granularity": granularity, "html": False}
    r = explain(explainer, body)
    assert r.status_code == 200, r.text
    [e] = r.json()["explanations"]
    model, tokenizer = hf_model
    template, values = captum_template(tokenizer, content, e["input_features"])
    llm_attr = LLMAttribution(FeatureAblation(model), tokenizer)
    inp = TextTemplateInput(template, values=values, baselines=[""] * len(values))
    with torch.no_grad():
        result = llm_attr.attribute(inp, target=response, forward_in_tokens=False)
    ours = e["seq_attr"]
    theirs = result.seq_attr.tolist()
    assert len(ours) == len(theirs) == len(values) >= 3
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a == pytest.approx(b, abs=ABS_TOL + REL_TOL * abs(b)), (
            i, values[i], ours, theirs)
    # and the baseline log-probability of the response itself
    ids = tokenizer(template.format(*values), return_tensors="pt")["input_ids"]
    target = tokenizer(response, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(torch.cat([ids, target], dim=1)).logits[0, ids.shape[1] - 1:-1]
    hf_logprob = torch.log_softmax(logits, -1).gather(-1, target[0][:, None]).sum().item()
    assert e["baseline_logprob"] == pytest.approx(hf_logprob, abs=ABS_TOL)
