"""Bad input gets a clear 4xx; an unreachable or slow predictor gets 502 / 504 with the reason."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.explainers.conftest import MODEL, explain, start_explainer
from tests.support.server import free_port

pytestmark = pytest.mark.slow

CHAT = {"messages": [{"role": "user", "content": "Alice lives in Paris. Bob lives in Rome."}],
        "response": "Rome."}


@pytest.mark.parametrize("body,needle", [
    (CHAT | {"method": "shap_magic"}, "unknown method 'shap_magic'"),
    (CHAT | {"granularity": "paragraph"}, "unknown granularity 'paragraph'"),
    ({"prompt": "   ", "response": "x"}, "prompt is empty"),
    ({"messages": [{"role": "user", "content": ""}]}, "prompt is empty"),
    (CHAT | {"granularity": "token", "params": {"budget": 4}}, "over the budget of 4"),
    (CHAT | {"params": {"budget": 10**6}}, "params.budget must be at least 1 and at most"),
    (CHAT | {"method": "sampled_ablation", "params": {"num_samples": 64, "budget": 20}},
     "needs 64 forward passes"),
    ({"instances": "nope"}, "instances"),
])
def test_bad_input_is_400(explainer, body: dict, needle: str) -> None:
    r = explain(explainer, body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def test_non_json_body_is_400(explainer) -> None:
    r = httpx.post(f"{explainer.url}/v1/models/{MODEL}:explain", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("the request body is not JSON"), r.text
    assert r.json()["type"] == "ClientError"


def test_unknown_model_is_404(explainer) -> None:
    r = httpx.post(f"{explainer.url}/v1/models/other:explain", json=CHAT)
    assert r.status_code == 404, r.text
    assert r.json()["error"] == "Model with name other does not exist."


def test_too_many_instances_is_400_naming_the_flag(explainer) -> None:
    """``instances`` is capped (default 8): more is refused before any of them is explained."""
    default_cap = 8
    body = {"instances": [CHAT | {"html": False}] * (default_cap + 1)}
    t0 = time.monotonic()
    r = explain(explainer, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == (f"'instances' holds {default_cap + 1} explain requests; the "
                                 f"limit is {default_cap} (--max_instances)")
    assert time.monotonic() - t0 < 5  # nothing was explained


@pytest.mark.parametrize("words", [8_000, 200_000])
def test_long_prompt_is_400_before_features_are_built(explainer, words: int) -> None:
    """A prompt over ``--max_prompt_tokens`` (default 2048) is refused before its features
    are built: 8,000 words (tokenized, then refused) and 200,000 (refused untokenized)."""
    prompt = " ".join(["word"] * words)
    t0 = time.monotonic()
    r = explain(explainer, {"prompt": prompt, "response": "x", "granularity": "word"})
    elapsed = time.monotonic() - t0
    assert r.status_code == 400, r.text
    msg = r.json()["error"]
    assert msg.startswith("the prompt has ") and "the limit is" in msg, msg
    assert "(--max_prompt_tokens)" in msg and "features" not in msg, msg
    assert elapsed < 5, elapsed  # the old code spent seconds building 8,000 word features
    # the explainer still answers, and quickly
    assert httpx.get(f"{explainer.url}/v2/health/live", timeout=5).status_code == 200


def test_response_counts_toward_the_token_limit(explainer) -> None:
    r = explain(explainer, CHAT | {"response": " ".join(["word"] * 3000)})
    assert r.status_code == 400, r.text
    assert "the prompt and the response have" in r.json()["error"]
    assert "(--max_prompt_tokens)" in r.json()["error"]


def test_slow_then_unreachable_predictor(model_dir: str) -> None:
    """A predictor that accepts connections but never answers, then one that is gone."""
    port = free_port()
    hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hole.bind(("127.0.0.1", port))
    hole.listen(64)  # never accept(): connections complete in the backlog, no answer comes
    server = start_explainer(f"127.0.0.1:{port}", model_dir, name="explainer-blackhole",
                             extra=["--predictor_timeout=2", "--methods=leave_one_out"],
                             health_path="/v2/health/live")
    try:
        # not ready: its predictor does not answer; but alive (liveness never asks it)
        assert httpx.get(f"{server.url}/v1/models/{MODEL}", timeout=10).status_code == 503
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 503
        assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200
        # a body over --max_request_bytes (1 MiB): 413 in front of KServe, no predictor call
        big = httpx.post(f"{server.url}/v1/models/{MODEL}:explain", timeout=30,
                         content=b"{" + b" " * (1024 * 1024) + b"}",
                         headers={"content-type": "application/json"})
        assert big.status_code == 413, big.text
        assert big.json()["type"] == "PayloadTooLarge"
        t0 = time.monotonic()
        r = explain(server, CHAT, timeout=30)
        assert r.status_code == 504, r.text
        assert "did not answer within 2 s" in r.json()["error"]
        assert str(port) not in r.text  # the predictor's address is logged, never sent
        assert time.monotonic() - t0 < 10
        hole.close()
        r = explain(server, CHAT, timeout=30)
        assert r.status_code == 502, r.text
        assert "cannot reach the predictor" in r.json()["error"]
        assert str(port) not in r.text and f"127.0.0.1:{port}" in server.log()
        assert server.proc is not None and server.proc.poll() is None  # still serving
    finally:
        hole.close()
        server.stop()
