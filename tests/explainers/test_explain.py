"""End to end: the real explainer process explains the real predictor's (SmolLM2) answers."""

from __future__ import annotations

import math

import httpx
import pytest

from tests.explainers.conftest import MODEL, expected_passes, explain

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
    n = len(texts)
    assert f["k"] == max(1, round(0.2 * n))  # the documented default: 20 % of the features
    # few enough k-subsets to try them all (no more than the default 16 trials)
    assert f["random_exhaustive"] is True and f["random_subsets"] == math.comb(n, f["k"])
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
    # baseline + one pass per feature; the deletion test's sets (top-1 and every single
    # feature) are scored already, so they are not sent again
    n = len(e["input_features"])
    singles = {frozenset({i}) for i in range(n)}
    assert e["stats"]["forward_passes"] == expected_passes(singles, e) == 1 + n
    # sent together: the baseline first, then the n perturbations 64 per predictor request
    # (--predictor_batch_size), not one request each
    assert e["stats"]["predictor_requests"] == 1 + -(-n // 64) < 1 + n, e["stats"]
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
    prompt = FACTS + " Answer:"
    params = {"num_samples": 10, "faithfulness_trials": 5}
    body = {"prompt": prompt, "response": " Rome", "granularity": "word",
            "method": "sampled_ablation", "params": params, "html": False}
    [e] = explain(explainer, body).json()["explanations"]
    n = len(prompt.split())
    assert len(e["seq_attr"]) == n and e["method_info"]["num_samples"] == params["num_samples"]
    # at most: the baseline, the masks, the deletion test's top-k set and its random subsets
    # (fewer when a set repeats), whatever the number of features
    k = e["faithfulness"]["k"]
    most = 1 + params["num_samples"] + 1 + min(math.comb(n, k), params["faithfulness_trials"])
    assert 1 + params["num_samples"] <= e["stats"]["forward_passes"] <= most


def test_budget_counts_the_deletion_test(explainer) -> None:
    """The budget covers the baseline, the method and the deletion test, not the method alone:
    a budget that fits only the method is refused before any predictor call."""
    n = len(CHAT["messages"][0]["content"].split(". "))  # 3 sentences
    trials = 2
    method_only = 1 + n  # baseline + leave-one-out
    needed = method_only + 1 + min(math.comb(n, 1), trials)  # + top-1 + random 1-subsets
    params = {"faithfulness_trials": trials, "faithfulness_k": 1}
    r = explain(explainer, CHAT | {"params": params | {"budget": needed - 1}, "html": False})
    assert r.status_code == 400, r.text
    msg = r.json()["error"]
    assert f"deletion test ({needed - method_only})" in msg and f"that is {needed}" in msg, msg
    assert f"over the budget of {needed - 1}" in msg
    r = explain(explainer, CHAT | {"params": params | {"budget": needed}, "html": False})
    assert r.status_code == 200, r.text
    [e] = r.json()["explanations"]
    assert len(e["input_features"]) == n
    assert e["stats"]["forward_passes"] <= needed
