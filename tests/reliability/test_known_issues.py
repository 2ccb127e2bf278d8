"""Deterministic reproductions of what the fuzz tests found (issue 6, item 5).

Why a file of its own: a fuzz failure is a random example; each bug it found gets a fixed
request here, asserting the behaviour the design asks for (bad input is a 4xx in the
protocol's error shape, never a 5xx). All of them were fixed in runtime/ (commit 170df43) and
these tests keep them fixed. A new finding goes here as ``pytest.mark.xfail(strict=True,
raises=AssertionError, reason=...)`` until its fix lands, with a matching entry in
``fuzzing.KNOWN_ISSUES`` so the fuzzing goes on looking past it; the marker and the entry are
removed in the same change as the fix (strict: the suite fails the moment a fix lands).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.reliability.fuzzing import MODEL
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow
LONE = "\ud800"  # an unpaired surrogate: json.dumps escapes it as \\ud800, UTF-8 cannot encode it


def post(url: str, body: Any) -> httpx.Response:
    """POST ``body`` as JSON text exactly as Python's json module writes it."""
    return httpx.post(url, content=json.dumps(body), timeout=120,
                      headers={"content-type": "application/json"})


def v2_infer(prompt: str, **params: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1],
                        "data": [prompt]}], "parameters": {"max_tokens": 4, **params}}


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": content}],
            **extra}


def is_error_shape(route: str, payload: Any) -> bool:
    """OpenAI's ``{"error": {"message": ...}}`` on /openai, ``{"error": "..."}`` on v2."""
    if not isinstance(payload, dict):
        return False
    if route.startswith("/openai"):
        return isinstance(payload.get("error"), dict) and "message" in payload["error"]
    return isinstance(payload.get("error"), str)


def assert_client_error(route: str, response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, f"{response.status_code} {response.text[:500]}"
    assert is_error_shape(route, response.json()), response.text[:500]


GENERATE = f"/v2/models/{MODEL}/generate"
STREAM = f"/v2/models/{MODEL}/generate_stream"
INFER = f"/v2/models/{MODEL}/infer"
COMPLETIONS = "/openai/v1/completions"
CHAT = "/openai/v1/chat/completions"

SURROGATE_CASES = [
    pytest.param(COMPLETIONS, {"model": MODEL, "prompt": LONE, "max_tokens": 4},
                 id="openai-completions-prompt"),
    pytest.param(CHAT, chat(LONE), id="openai-chat-content"),
    pytest.param(GENERATE, {"text_input": LONE, "parameters": {"max_tokens": 4}},
                 id="generate-text_input"),
    pytest.param(STREAM, {"text_input": LONE, "parameters": {"max_tokens": 4}},
                 id="generate_stream-text_input"),
    pytest.param(INFER, v2_infer(LONE), id="v2-infer-text_input"),
    pytest.param(GENERATE, {"text_input": "hi", "parameters": {"max_tokens": 4, "stop": [LONE]}},
                 id="generate-stop"),
    pytest.param(INFER, v2_infer("hi", stop=LONE), id="v2-infer-stop"),
    pytest.param(COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": 4, "stop": [LONE]},
                 id="openai-completions-stop"),
    pytest.param(COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": 4,
                               "bad_words": [LONE]},
                 id="openai-completions-bad_words"),
    pytest.param(CHAT, chat("hi", stop=LONE), id="openai-chat-stop"),
    pytest.param(CHAT, chat("hi", stop=LONE, stream=True), id="openai-chat-stream-stop"),
]


@pytest.mark.parametrize("route,body", SURROGATE_CASES)
def test_unpaired_surrogate_is_a_client_error(predictor: ServerProcess, route: str,
                                              body: dict[str, Any]) -> None:
    """JSON may escape an unpaired surrogate ("\\ud800"); UTF-8 cannot carry it. Wherever it
    sits (prompt, stop, bad_words), the answer is a 400, on every protocol."""
    assert_client_error(route, post(predictor.url + route, body))


VERSIONED = [
    pytest.param("GET", f"/v2/models/{MODEL}/versions/1", None, id="metadata"),
    pytest.param("GET", f"/v2/models/{MODEL}/versions/1/ready", None, id="ready"),
    pytest.param("POST", f"/v2/models/{MODEL}/versions/1/infer", v2_infer("Hello"), id="infer"),
]


@pytest.mark.parametrize("method,route,body", VERSIONED)
def test_versioned_v2_routes_are_not_5xx(predictor: ServerProcess, method: str, route: str,
                                         body: dict[str, Any] | None) -> None:
    """The v2 spec's paths carry a version. A model without versions may serve the request
    or refuse it (404 / 400 in the v2 error shape), but a 5xx says the server is at fault."""
    r = httpx.request(method, predictor.url + route, json=body, timeout=120)
    assert r.status_code < 500, f"{r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        assert is_error_shape(route, r.json()), r.text


STREAM_BAD_INPUT = [
    pytest.param({"text_input": "", "parameters": {"max_tokens": 4}}, id="empty-prompt"),
    pytest.param({"text_input": "hi", "parameters": {"max_tokens": 4, "allowed_token_ids": []}},
                 id="empty-allowed_token_ids"),
]


@pytest.mark.parametrize("body", STREAM_BAD_INPUT)
def test_generate_stream_rejects_bad_input_before_streaming(predictor: ServerProcess,
                                                            body: dict[str, Any]) -> None:
    """Bad input is a 4xx before the stream starts (docs/design.md, "Contract"), as the same
    body on /generate is."""
    plain = post(predictor.url + GENERATE, body)
    assert plain.status_code == 400, plain.text  # the non-streamed route gets it right
    assert_client_error(STREAM, post(predictor.url + STREAM, body))


UNDECODABLE = [
    pytest.param(INFER, id="v2-infer"),
    pytest.param(CHAT, id="openai-chat"),
]


@pytest.mark.parametrize("route", UNDECODABLE)
def test_undecodable_body_gets_the_protocol_error_shape(predictor: ServerProcess,
                                                        route: str) -> None:
    r = httpx.post(predictor.url + route, content=b"\xff\xfe\x00", timeout=120,
                   headers={"content-type": "application/json"})
    assert_client_error(route, r)


def test_repository_unload_cannot_take_the_model_down(predictor: ServerProcess) -> None:
    """One anonymous request must not take a pod out of service. On the session's predictor
    (model loading off, no key): when the bug is present the request kills its engine, and
    this test and every later one on that server fail, loudly. (It had its own server; an
    engine start is a minute of the suite's time.)"""
    r = httpx.post(f"{predictor.url}/v2/repository/models/{MODEL}/unload", timeout=60)
    after = post(predictor.url + GENERATE, {"text_input": "The capital of France is",
                                            "parameters": {"max_tokens": 4, "temperature": 0}})
    assert after.status_code == 200, (
        f"unload answered {r.status_code} {r.text[:200]}; then generate answered "
        f"{after.status_code} {after.text[:200]}")
    assert "Paris" in after.json()["text_output"], after.text
    assert r.status_code in (401, 403, 404, 405), r.text
