"""Unit tier: the APIs vLLM's server answers beyond chat and completions (issue 23) go through
the one pipeline: Responses, Anthropic's Messages, score, rerank, pooling, classify,
/invocations, audio; under /openai and unprefixed; key, readiness, model names, limits on the
validated values, one count, errors in each API's shape (Anthropic's on /v1/messages), and
vLLM's refused routes answer 404 with the reason. The fake engine answers; that each API works
is shown against the real process (tests/runtime/test_vllm_apis_served.py,
tests/runtime/test_embeddings.py)."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.lifecycle import State
from tests.runtime.test_pipeline import requests_total, send
from tests.support.app import assemble

RESPONSES = {"model": "smollm2", "input": "What is the capital of France?"}
MESSAGES = {"model": "smollm2", "max_tokens": 20,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
COUNT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}
RERANK = {"model": "smollm2", "query": "capital of France",
          "documents": ["Paris is the capital of France.", "Bananas are yellow."]}
SCORE = {"model": "smollm2", "queries": "capital of France", "documents": ["Paris", "Rome"]}
POOLING = {"model": "smollm2", "input": "hello"}

NEW = [
    ("/v1/responses", RESPONSES, "responses"),
    ("/v1/messages", MESSAGES, "messages"),
    ("/v1/messages/count_tokens", COUNT, "count_tokens"),
    ("/score", SCORE, "score"),
    ("/v1/score", SCORE, "score"),
    ("/rerank", RERANK, "rerank"),
    ("/v1/rerank", RERANK, "rerank"),
    ("/v2/rerank", RERANK, "rerank"),
    ("/v2/embed", {"model": "smollm2", "texts": ["hello"]}, "cohere_embed"),
    ("/pooling", POOLING, "pooling"),
    ("/classify", POOLING, "classify"),
    ("/invocations", POOLING, "invocations"),
]


def _protocol(path: str) -> str:
    return "anthropic" if "/messages" in path else "openai"


@pytest.mark.parametrize("prefix", ["", "/openai"])
@pytest.mark.parametrize("path,body,kind", NEW)
def test_served_under_openai_and_unprefixed(prefix: str, path: str, body: Any,
                                            kind: str) -> None:
    assembled = assemble()
    before = requests_total(protocol=_protocol(path), outcome="success", model="smollm2")
    r = send(assembled, "POST", prefix + path, body)
    assert r.status_code == 200, r.text
    assert r.json()["object"] == kind  # the fake engine names the endpoint it was asked
    assert requests_total(protocol=_protocol(path), outcome="success",
                          model="smollm2") == before + 1


@pytest.mark.parametrize("path,body,kind", NEW)
def test_key_required_in_the_api_shape(path: str, body: Any, kind: str) -> None:
    assembled = assemble(api_key="k")
    r = send(assembled, "POST", path, body)
    assert r.status_code == 401, r.text
    if _protocol(path) == "anthropic":
        assert r.json() == {"type": "error", "error": {
            "type": "authentication_error", "message": "missing or invalid API key"}}
    else:
        assert r.json()["error"]["code"] == 401
    assert send(assembled, "POST", path, body,
                headers={"authorization": "Bearer k"}).status_code == 200


@pytest.mark.parametrize("path,body,kind", NEW)
def test_503_while_loading(path: str, body: Any, kind: str) -> None:
    r = send(assemble(state=State.LOADING), "POST", path, body)
    assert r.status_code == 503 and r.headers["retry-after"], r.text
    if _protocol(path) == "anthropic":
        assert r.json()["type"] == "error"
        assert r.json()["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize("path,body,kind", NEW)
def test_unknown_model_is_404_counted_as_other(path: str, body: Any, kind: str) -> None:
    assembled = assemble()
    before = requests_total(protocol=_protocol(path), model="_other")
    r = send(assembled, "POST", path, {**body, "model": "nope"})
    assert r.status_code == 404, r.text
    assert "nope" in r.text
    if _protocol(path) == "anthropic":
        assert r.json()["error"]["type"] == "not_found_error"
    assert requests_total(protocol=_protocol(path), model="_other") == before + 1


def test_aliases_and_adapters_are_models_here_too() -> None:
    assembled = assemble(served_model_aliases=["small"])
    for path, body, _ in NEW:
        assert send(assembled, "POST", path, {**body, "model": "small"}).status_code == 200


def test_limits_read_the_validated_values() -> None:
    assembled = assemble(limits={"max_tokens": 10, "max_batch_size": 2})
    r = send(assembled, "POST", "/v1/responses", {**RESPONSES, "max_output_tokens": 11})
    assert r.status_code == 400 and "--max_tokens_limit" in r.text, r.text
    r = send(assembled, "POST", "/v1/messages", {**MESSAGES, "max_tokens": 11})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "--max_tokens_limit" in r.json()["error"]["message"]
    r = send(assembled, "POST", "/rerank", {**RERANK, "documents": ["a", "b", "c"]})
    assert r.status_code == 400 and "--max_batch_size" in r.text, r.text


def test_responses_without_max_output_tokens_get_the_cap() -> None:
    assembled = assemble(limits={"max_tokens": 10, "default_max_tokens": 4})
    send(assembled, "POST", "/v1/responses", RESPONSES)
    assert assembled.engine.submitted[-1]["max_output_tokens"] == 4


def test_bad_body_on_messages_is_anthropic_shaped() -> None:
    r = send(assemble(), "POST", "/v1/messages", [1, 2])
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path,needle", [
    ("/v1/responses/resp_1", "not stored"),
    ("/openai/v1/responses/resp_1/cancel", "not stored"),
    ("/v1/chat/completions/batch", "one request per conversation"),
    ("/openai/v1/messages/render", "render"),
    ("/inference/v1/generate", "token-in/token-out"),
])
def test_refused_routes_say_why(path: str, needle: str) -> None:
    r = send(assemble(), "GET" if path.endswith("resp_1") else "POST", path, {})
    assert r.status_code == 404, r.text
    assert needle in r.text


def test_version_and_ping() -> None:
    assembled = assemble(api_key="k")
    assert send(assembled, "GET", "/ping").status_code == 200  # a probe: no key
    assert send(assembled, "GET", "/version").status_code == 401
    r = send(assembled, "GET", "/openai/version", headers={"authorization": "Bearer k"})
    assert r.status_code == 200 and "version" in r.json()
    assert send(assemble(state=State.LOADING), "GET", "/ping").status_code == 503
