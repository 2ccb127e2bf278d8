"""README claims that had no test: OpenAI's vLLM extras (``top_k``, ``prompt_logprobs``), the
default temperature, v2 requested outputs, vLLM's listener flags ignored with a warning,
``--enable-log-requests``, and the operator routes refused without a key."""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest

from tests.runtime.conftest import MODEL, QUESTION, v2_body
from tests.support.server import REPO, free_port, runtime_command

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"


def _completion(http: httpx.Client, **extra: object) -> dict:
    r = http.post("/openai/v1/completions", json={"model": MODEL, "prompt": PROMPT,
                                                   "max_tokens": 12, **extra})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_top_k_one_is_greedy_and_prompt_logprobs_score_the_prompt(http: httpx.Client) -> None:
    greedy = _completion(http, temperature=0)["text"]
    for seed in (1, 2, 3):  # sampling at 1.0 restricted to the top token is greedy
        assert _completion(http, temperature=1.0, top_k=1, seed=seed)["text"] == greedy
    scored = _completion(http, temperature=0, max_tokens=1, prompt_logprobs=0,
                         return_token_ids=True)
    prompt_ids = scored["prompt_token_ids"]
    logprobs = scored["prompt_logprobs"]
    assert len(logprobs) == len(prompt_ids) and logprobs[0] is None  # the first has no context
    for token, entry in zip(prompt_ids[1:], logprobs[1:], strict=True):
        assert entry[str(token)]["logprob"] <= 0.0


def test_default_temperature_samples(http: httpx.Client) -> None:
    """SmolLM2's generation config sets no temperature: the default is 1.0, so a request
    without one samples (different seeds, different answers) while temperature 0 does not."""
    texts = {_completion(http, seed=seed, max_tokens=16)["text"] for seed in range(4)}
    assert len(texts) > 1, texts
    assert len({_completion(http, temperature=0, seed=s)["text"] for s in range(3)}) == 1


def test_v2_requested_outputs_filter_the_answer(http: httpx.Client) -> None:
    body = v2_body([QUESTION], max_tokens=8, temperature=0, apply_chat_template=True,
                   return_finish_reason=True, return_num_output_tokens=True)
    full = http.post(f"/v2/models/{MODEL}/infer", json=body).json()
    assert {o["name"] for o in full["outputs"]} == {"text_output", "finish_reason",
                                                     "num_output_tokens"}
    body["outputs"] = [{"name": "num_output_tokens"}]
    only = http.post(f"/v2/models/{MODEL}/infer", json=body)
    assert only.status_code == 200, only.text
    assert [o["name"] for o in only.json()["outputs"]] == ["num_output_tokens"]
    assert only.json()["outputs"][0]["data"] == [8]


def test_operator_routes_without_a_key_refuse_to_start(model_dir: str) -> None:
    out = subprocess.run(runtime_command(
        model_dir=model_dir, http_port=free_port(), grpc_port=free_port(),
        extra=["--enable_operator_routes", "true"]), capture_output=True, text=True,
        timeout=300, cwd=REPO, env={k: v for k, v in os.environ.items()
                                    if k not in ("API_KEY", "OPERATOR_API_KEY")})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "--enable_operator_routes requires an operator key" in out.stderr
    assert "Traceback" not in out.stderr


def test_an_empty_key_secret_refuses_to_start(model_dir: str) -> None:
    """Keys fail closed in the real process: ``$API_KEY`` set from a Secret that came out
    empty is an exit 2 naming it, before any engine, never a server without a key."""
    out = subprocess.run(runtime_command(
        model_dir=model_dir, http_port=free_port(), grpc_port=free_port()),
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "API_KEY": ""})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "$API_KEY is set but empty" in out.stderr
    assert "Traceback" not in out.stderr
