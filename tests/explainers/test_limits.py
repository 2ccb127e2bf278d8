"""Server-side caps set by flags, against a real explainer started with small ones.

``--max_features``, ``--max_instances``, ``--max_prompt_tokens`` each refuse with a 400 that
names the flag; ``--ig_batch_tokens`` splits integrated gradients into step chunks whose
attributions equal the unchunked ones (the session explainer, whose default bound holds all
steps of a short prompt in one pass), and refuses a sequence one pass cannot hold.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.explainers.conftest import explain, start_explainer
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

MAX_FEATURES, MAX_INSTANCES, MAX_PROMPT_TOKENS, IG_BATCH_TOKENS = 4, 2, 160, 100
FACTS = "Alice lives in Paris. Bob lives in Rome. Where does Bob live?"
CHAT = {"messages": [{"role": "user", "content": FACTS}], "response": "Bob lives in Rome.",
        "html": False}


@pytest.fixture(scope="module")
def tight(predictor_url: str, model_dir: str) -> Iterator[ServerProcess]:
    server = start_explainer(
        predictor_url.split("://", 1)[1], model_dir, name="explainer-tight",
        extra=[f"--max_features={MAX_FEATURES}", f"--max_instances={MAX_INSTANCES}",
               f"--max_prompt_tokens={MAX_PROMPT_TOKENS}",
               f"--ig_batch_tokens={IG_BATCH_TOKENS}"])
    try:
        yield server
    finally:
        server.stop()


def error_of(r) -> str:
    assert r.status_code == 400, r.text
    return r.json()["error"]


def test_max_features(tight: ServerProcess) -> None:
    sentences = [f"Fact number {i} is true." for i in range(MAX_FEATURES + 1)]
    body = CHAT | {"messages": [{"role": "user", "content": " ".join(sentences)}]}
    msg = error_of(explain(tight, body))
    assert msg.startswith(f"the prompt has {len(sentences)} features at granularity "
                          f"'sentence'; the limit is {MAX_FEATURES} (--max_features)"), msg
    # at the limit it is explained
    body["messages"][0]["content"] = " ".join(sentences[:MAX_FEATURES])
    r = explain(tight, body)
    assert r.status_code == 200, r.text
    assert len(r.json()["explanations"][0]["seq_attr"]) == MAX_FEATURES


def test_max_instances(tight: ServerProcess) -> None:
    msg = error_of(explain(tight, {"instances": [CHAT] * (MAX_INSTANCES + 1)}))
    assert msg == (f"'instances' holds {MAX_INSTANCES + 1} explain requests; the limit is "
                   f"{MAX_INSTANCES} (--max_instances)")
    r = explain(tight, {"instances": [CHAT] * MAX_INSTANCES})
    assert r.status_code == 200, r.text
    assert len(r.json()["explanations"]) == MAX_INSTANCES


def test_max_prompt_tokens(tight: ServerProcess) -> None:
    long_chat = CHAT | {"messages": [{"role": "user", "content": "word " * MAX_PROMPT_TOKENS}]}
    msg = error_of(explain(tight, long_chat))
    assert msg.startswith("the prompt has ") and "(chat template included)" in msg, msg
    assert msg.endswith(f"the limit is {MAX_PROMPT_TOKENS} (--max_prompt_tokens)"), msg
    # the prompt fits, the prompt and the response together do not
    msg = error_of(explain(tight, CHAT | {"response": "Rome. " * MAX_PROMPT_TOKENS}))
    assert msg.startswith("the prompt and the response have"), msg
    assert msg.endswith(f"the limit is {MAX_PROMPT_TOKENS} (--max_prompt_tokens)"), msg


def test_integrated_gradients_chunks_equal_one_pass(tight: ServerProcess,
                                                    explainer: ServerProcess) -> None:
    n_steps = 4  # IG is slow on a shared CPU: few steps, and a long timeout
    body = CHAT | {"method": "integrated_gradients", "params": {"n_steps": n_steps}}
    r = explain(explainer, body, timeout=600)
    assert r.status_code == 200, r.text
    [whole] = r.json()["explanations"]
    r = explain(tight, body, timeout=600)
    assert r.status_code == 200, r.text
    [chunked] = r.json()["explanations"]
    seq = chunked["method_info"]["sequence_tokens"]
    assert seq == whole["method_info"]["sequence_tokens"] <= IG_BATCH_TOKENS
    # the session explainer's default bound holds every step of this short prompt at once
    assert whole["method_info"]["internal_batch_size"] == n_steps
    assert whole["method_info"]["step_passes"] == 1
    # here one pass holds at most IG_BATCH_TOKENS tokens
    batch = chunked["method_info"]["internal_batch_size"]
    assert batch == IG_BATCH_TOKENS // seq < n_steps
    assert chunked["method_info"]["step_passes"] == -(-n_steps // batch)
    # equal up to float32 rounding, which differs with the batch shape (tests/explainers/
    # test_ig_chunks.py shows exact equality in float64)
    margin = 1e-3 * max(abs(x) for x in whole["seq_attr"])
    assert chunked["seq_attr"] == pytest.approx(whole["seq_attr"], abs=margin)


def test_integrated_gradients_refuses_what_one_pass_cannot_hold(tight: ServerProcess) -> None:
    words = " ".join(["Bob lives in Rome."] * 20)  # fits --max_prompt_tokens, not one pass
    body = CHAT | {"method": "integrated_gradients", "granularity": "message",
                   "messages": [{"role": "user", "content": words}], "params": {"n_steps": 2}}
    msg = error_of(explain(tight, body))
    assert f"than the {IG_BATCH_TOKENS} tokens one pass may hold (--ig_batch_tokens)" in msg, msg
