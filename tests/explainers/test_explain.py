"""End to end: the real explainer process explains the real predictor's (SmolLM2) answers."""

from __future__ import annotations

import httpx
import pytest

from tests.explainers.conftest import MODEL, explain

pytestmark = pytest.mark.slow

FACTS = "Alice lives in Paris. Bob lives in Rome. Where does Bob live?"
CHAT = {"messages": [{"role": "user", "content": FACTS}], "response": "Bob lives in Rome.",
        "granularity": "sentence"}
METHODS = ["leave_one_out", "sampled_ablation", "integrated_gradients"]


def test_ready_and_lists_methods(explainer) -> None:
    assert httpx.get(f"{explainer.url}/v1/models/{MODEL}").json()["ready"] is True
    assert httpx.get(f"{explainer.url}/v2/health/ready").status_code == 200
    listed = httpx.get(f"{explainer.url}/v1/explainer/methods").json()["methods"]
    names = {m["name"] for m in listed}
    assert set(METHODS) <= names
    for m in listed:
        assert set(m["granularities"]) <= {"token", "word", "sentence", "message"}


@pytest.mark.parametrize("method", METHODS)
def test_supporting_fact_outranks_distractor(explainer, method: str) -> None:
    # IG: 8 steps keep the test quick; the ranking is the same at the default 16
    params = {"n_steps": 8} if method == "integrated_gradients" else {}
    r = explain(explainer, CHAT | {"method": method, "params": params})
    assert r.status_code == 200, r.text
    [e] = r.json()["explanations"]
    texts = [f["text"] for f in e["input_features"]]
    # only what the user sent is a feature, not the template's default system message
    assert texts == ["Alice lives in Paris.", "Bob lives in Rome.", "Where does Bob live?"]
    attr = dict(zip(texts, e["seq_attr"], strict=True))
    assert attr["Bob lives in Rome."] > attr["Alice lives in Paris."] + 1.0, attr
    # the response tokens and their log-probabilities under the unperturbed prompt
    assert "".join(t["text"] for t in e["output_tokens"]) == "Bob lives in Rome."
    assert e["baseline_logprob"] == pytest.approx(sum(t["logprob"] for t in e["output_tokens"]))
    assert e["baseline_logprob"] < 0
    # the deletion test: removing the top feature hurts more than removing one at random
    f = e["faithfulness"]
    assert f["k"] == 1 and f["random_exhaustive"] is True and f["random_subsets"] == 3
    assert f["topk_drop"] > f["random_drop_mean"] + 0.5, f
    assert f["beats_random"] is True
    assert e["stats"]["forward_passes"] >= 1 and e["stats"]["wall_ms"] > 0
    html = e["html"]
    assert "Bob lives in Rome." in html and "rgba(22,163,74" in html


def test_leave_one_out_token_attr_adds_up(explainer) -> None:
    [e] = explain(explainer, CHAT | {"method": "leave_one_out", "html": False}).json()[
        "explanations"]
    assert "html" not in e
    # per response token effects sum to the sequence effect, feature by feature
    columns = list(zip(*e["token_attr"], strict=True))
    assert len(e["token_attr"]) == len(e["output_tokens"])
    for col, total in zip(columns, e["seq_attr"], strict=True):
        assert sum(col) == pytest.approx(total, abs=1e-6)
    # baseline + one pass per feature; the deletion test (top-1 and every single feature)
    # reuses those scores instead of sending the same prompts again
    assert e["stats"]["forward_passes"] == 1 + 3
    assert e["faithfulness"]["topk_drop"] == pytest.approx(max(e["seq_attr"]))


def test_generates_the_response_when_absent(explainer) -> None:
    body = {"instances": [{"messages": [{"role": "user",
                                         "content": "What is the capital of France?"}],
                           "granularity": "word", "html": False}]}
    r = explain(explainer, body)
    assert r.status_code == 200, r.text
    [e] = r.json()["explanations"]
    assert "Paris" in e["response"]
    ranked = sorted(zip(e["seq_attr"], [f["text"] for f in e["input_features"]],
                        strict=True), reverse=True)
    assert {ranked[0][1], ranked[1][1]} & {"capital", "France?"}, ranked


def test_sampled_ablation_cost_is_the_sample_budget(explainer) -> None:
    body = {"prompt": FACTS + " Answer:", "response": " Rome", "granularity": "word",
            "method": "sampled_ablation", "params": {"num_samples": 10}, "html": False}
    [e] = explain(explainer, body).json()["explanations"]
    assert len(e["seq_attr"]) == 13 and e["method_info"]["num_samples"] == 10
    # at most: the baseline, 10 masks, the deletion test's top-k and 16 random subsets
    # (fewer when a set repeats), whatever the number of features
    assert 1 + 10 <= e["stats"]["forward_passes"] <= 1 + 10 + 1 + 16
