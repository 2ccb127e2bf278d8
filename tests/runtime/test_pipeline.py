"""Unit tier: the pipeline's steps on every protocol, through the assembled app with a fake
engine: keys, readiness, model resolution, limits on validated values, error shapes, and one
count of every request with a bounded model label."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from runtime.lifecycle import State
from tests.support.app import Assembled, assemble

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}
V2 = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["a b"]}]}


def send(assembled: Assembled, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=assembled.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, json=body, headers=headers)

    return asyncio.run(go())


def requests_total(**labels: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name != "kserve_llm_requests":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and all(
                    sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


INFERENCE = [
    ("/openai/v1/chat/completions", CHAT),
    ("/v1/completions", {"model": "smollm2", "prompt": "hi"}),
    ("/v2/models/smollm2/infer", V2),
    ("/v2/models/smollm2/generate", {"text_input": "a b"}),
    ("/v2/models/smollm2/generate_stream", {"text_input": "a b"}),
    ("/v1/models/smollm2:predict", {"instances": ["a b"]}),
]


@pytest.mark.parametrize("path,body", INFERENCE)
def test_every_inference_route_answers(path: str, body: Any) -> None:
    r = send(assemble(), "POST", path, body)
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"]


@pytest.mark.parametrize("path,body", INFERENCE)
def test_key_required_with_protocol_shape(path: str, body: Any) -> None:
    assembled = assemble(api_key="k")
    r = send(assembled, "POST", path, body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    error = r.json()["error"]
    message = error["message"] if path.endswith("completions") else error
    assert message == "missing or invalid API key"
    assert send(assembled, "POST", path, body, {"authorization": "Bearer k"}).status_code == 200


def test_key_not_required_on_health_and_unprotected_metrics() -> None:
    assembled = assemble(api_key="k")
    for path in ("/", "/v2/health/live", "/v2/health/ready", "/v2/models/smollm2/ready",
                 "/v1/models/smollm2", "/metrics"):
        assert send(assembled, "GET", path).status_code == 200, path
    for path in ("/v2", "/v2/models/smollm2", "/openai/v1/models", "/v1/models"):
        assert send(assembled, "GET", path).status_code == 401, path
    assert send(assemble(api_key="k", protect_metrics=True), "GET", "/metrics").status_code == 401


@pytest.mark.parametrize("state,retry", [(State.LOADING, "5"), (State.DRAINING, "5"),
                                         (State.DEAD, "30")])
def test_not_ready_is_503_with_retry_after(state: State, retry: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    assembled = assemble(state=state)
    caplog.set_level(logging.INFO, logger="runtime.protocol.http_errors")
    for path, body in INFERENCE:
        r = send(assembled, "POST", path, body)
        assert r.status_code == 503 and r.headers["retry-after"] == retry, path
    assert not assembled.engine.submitted
    # a refusal in a state the lifecycle logs once: a WARNING line each, no ERROR, no traceback
    refusals = [r for r in caplog.records if "-> 503" in r.getMessage()]
    assert refusals and all(r.levelno == logging.WARNING and not r.exc_info for r in refusals)


def test_limits_read_validated_values_on_every_protocol() -> None:
    assembled = assemble(limits={"max_n": 2})
    for body in ({**CHAT, "n": "3"}, {**CHAT, "n": 3.0}):
        r = send(assembled, "POST", "/openai/v1/chat/completions", body)
        assert r.status_code == 400 and "--max_n" in r.json()["error"]["message"], r.text
    assembled = assemble(limits={"max_tokens": 10})
    for path, body in [("/openai/v1/completions",
                        {"model": "smollm2", "prompt": "a", "max_tokens": "11"}),
                       ("/v2/models/smollm2/generate",
                        {"text_input": "a", "parameters": {"max_tokens": 11.0}}),
                       ("/v1/models/smollm2:predict",
                        {"instances": ["a"], "parameters": {"max_tokens": "11"}})]:
        r = send(assembled, "POST", path, body)
        assert r.status_code == 400 and "--max_tokens_limit" in r.text, (path, r.text)
    assert not assembled.engine.submitted


def test_omitted_max_tokens_gets_the_cap() -> None:
    assembled = assemble(limits={"max_tokens": 10, "default_max_tokens": 4})
    r = send(assembled, "POST", "/openai/v1/chat/completions", CHAT)
    assert r.status_code == 200 and r.json()["max_tokens"] == 4


def test_unknown_models_share_one_label_and_are_counted_once() -> None:
    assembled = assemble()
    before = requests_total(model="_other")
    for name in ("x1", "x2", "x3"):
        r = send(assembled, "POST", f"/v2/models/{name}/generate", {"text_input": "a"})
        assert r.status_code == 404 and name in r.json()["error"]
    assert requests_total(model="_other") - before == 3
    assert requests_total(model="x1") == 0
    before_openai = requests_total(model="_other", protocol="openai")
    base = requests_total(model="smollm2", protocol="openai")
    r = send(assembled, "POST", "/openai/v1/chat/completions", {**CHAT, "model": "x4"})
    assert r.status_code == 404, r.text
    assert requests_total(model="_other", protocol="openai") - before_openai == 1
    assert requests_total(model="smollm2", protocol="openai") == base  # not the base model's
    before = requests_total(protocol="v2-generate")
    send(assembled, "POST", "/v2/models/smollm2/generate", {"text_input": "a"})
    assert requests_total(protocol="v2-generate") - before == 1


def test_oversized_body_is_413_in_the_protocol_shape() -> None:
    assembled = assemble(max_request_bytes=1000)
    big = {"model": "smollm2", "prompt": "x" * 2000}
    r = send(assembled, "POST", "/openai/v1/completions", big)
    assert r.status_code == 413 and r.json()["error"]["code"] == 413
    assert "--max_request_bytes" in r.json()["error"]["message"]
    r = send(assembled, "POST", "/v2/models/smollm2/generate", {"text_input": "x" * 2000})
    assert r.status_code == 413 and "--max_request_bytes" in r.json()["error"]


# The repository's load is an operator action: these tests' servers have an operator key.
OPERATOR_KEY = "operator-key"
OPERATOR = {"authorization": f"Bearer {OPERATOR_KEY}"}


def post_bytes(assembled: Assembled, path: str, body: bytes, *, chunked: bool,
               headers: dict[str, str] | None = None) -> httpx.Response:
    """POST exactly ``body``: with a Content-Length, or streamed without one (chunked)."""
    async def pieces() -> Any:
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=assembled.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post(path, content=pieces() if chunked else body,
                                     headers={"content-type": "application/json",
                                              **(headers or {})})

    return asyncio.run(go())


def padded(body: dict[str, Any], key: str, size: int) -> bytes:
    """``body`` as JSON of exactly ``size`` bytes (``key``'s string value is padded)."""
    raw = json.dumps({**body, key: ""}).encode()
    return json.dumps({**body, key: "x" * (size - len(raw))}).encode()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path,body,key", [
    ("/v2/models/smollm2/generate", {"parameters": {"max_tokens": 1}}, "text_input"),
    ("/v1/models/smollm2:predict", {"parameters": {"max_tokens": 1}}, "pad"),
    ("/openai/v1/completions", {"model": "smollm2", "max_tokens": 1}, "prompt"),
    ("/v2/repository/models/smollm2/load", {}, "pad"),
], ids=["generate", "predict", "openai", "repository"])
def test_max_request_bytes_is_the_exact_boundary(path: str, body: dict[str, Any], key: str,
                                                 chunked: bool) -> None:
    """A body of exactly --max_request_bytes passes the size check; one byte more is a 413 in
    the route's shape, whether the size is announced (Content-Length) or not (chunked)."""
    limit = 64 * 1024
    assembled = assemble(max_request_bytes=limit, operator_key=OPERATOR_KEY)
    at_limit = padded(body, key, limit)
    if path.endswith(":predict"):
        at_limit = padded({"instances": ["hi"], **body}, key, limit)
    assert len(at_limit) == limit
    r = post_bytes(assembled, path, at_limit, chunked=chunked, headers=OPERATOR)
    assert r.status_code != 413, r.text
    r = post_bytes(assembled, path, at_limit[:-1] + b" }", chunked=chunked, headers=OPERATOR)
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert "--max_request_bytes" in (error["message"] if isinstance(error, dict) else error)


@pytest.mark.parametrize("path,body,needle", [
    ("/v2/models/smollm2/generate", [1, 2], "JSON object"),
    ("/v2/models/smollm2/generate", {"text_input": 5}, "must be a string"),
    ("/v2/models/smollm2/generate", {"text_input": "a", "parameters": []}, "JSON object"),
    ("/v1/models/smollm2:predict", {"instances": "a"}, "non-empty list"),
    ("/v1/models/smollm2:predict", {"instances": [1]}, "strings"),
    ("/openai/v1/chat/completions", {"model": "smollm2"}, "messages"),
    ("/openai/v1/chat/completions", {"model": "nosuch", "messages": []}, "nosuch"),
])
def test_bad_input_is_4xx_in_shape(path: str, body: Any, needle: str) -> None:
    r = send(assemble(), "POST", path, body)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert needle in (error["message"] if isinstance(error, dict) else error)


def test_websocket_scope_is_refused() -> None:
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    with TestClient(assemble().app) as client, pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/openai/v1/realtime") as ws:
            ws.receive_text()


def nested(depth: int) -> bytes:
    """A JSON list nested ``depth`` levels deep."""
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("path,template", [
    ("/v2/models/smollm2/generate", b'{"text_input": "a", "parameters": {"stop": %s}}'),
    ("/v1/models/smollm2:predict", b'{"instances": %s}'),
    ("/openai/v1/completions", b'{"model": "smollm2", "prompt": %s}'),
    ("/v2/repository/models/smollm2/load", b'{"parameters": %s}'),
    ("/v2/models/smollm2/infer", b'{"inputs": [{"name": "text_input", "datatype": "BYTES", '
                                 b'"shape": [1], "data": ["a"]}], "parameters": {"stop": %s}}'),
], ids=["generate", "predict", "openai", "repository", "infer"])
@pytest.mark.parametrize("depth", [140, 50_000])
def test_deeply_nested_json_is_a_400_in_shape(path: str, template: bytes, depth: int) -> None:
    """JSON nested past the decoder's recursion limit (50,000: a RecursionError, once a 500
    with a traceback) or past the runtime's bound (``MAX_JSON_DEPTH``, 128) is a 400 in the
    route's shape; v2 infer's body is KServe's to parse and validate (its own 400: parameters
    are scalars there)."""
    r = post_bytes(assemble(operator_key=OPERATOR_KEY), path, template % nested(depth),
                   chunked=False, headers=OPERATOR)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    if path.endswith("/infer"):
        assert ("parsing the body" if depth > 1000 else "parameters.stop") in message, message
    else:
        assert "nests deeper than 128 levels" in message, message


def test_nesting_up_to_the_bound_is_accepted() -> None:
    """128 nested containers pass the bound; 129 are refused."""
    from runtime.limits import MAX_JSON_DEPTH, load_json

    assert load_json(b'{"a": %s}' % nested(MAX_JSON_DEPTH - 1)) is not None
    with pytest.raises(Exception, match="nests deeper"):
        load_json(b'{"a": %s}' % nested(MAX_JSON_DEPTH))


def test_a_fault_mid_stream_is_an_error_event_without_its_text() -> None:
    """generate_stream after its 200: a server fault ends the stream with an error event
    naming the kind of failure, not the exception's text; counted as a server error."""
    from tests.support.fake_engine import FakeEngine

    class Failing(FakeEngine):
        async def stream(self, request: Any) -> Any:
            async def pieces() -> Any:
                yield (await anext(await FakeEngine.stream(self, request)))
                raise RuntimeError("socket /var/run/secret-internal closed")

            return pieces()

    assembled = assemble(engine=Failing())
    before = requests_total(protocol="v2-generate", outcome="server_error")
    r = send(assembled, "POST", "/v2/models/smollm2/generate_stream", {"text_input": "a b c"})
    assert r.status_code == 200
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == {"error": "internal error: RuntimeError"}, events
    assert "secret" not in r.text
    assert requests_total(protocol="v2-generate", outcome="server_error") - before == 1


@pytest.mark.parametrize("path,body", INFERENCE)
def test_a_request_is_counted_before_its_last_byte_is_sent(path: str, body: Any) -> None:
    """A client that reads /metrics as soon as it has its answer finds the request counted:
    the count is taken before the answer's last byte reaches the transport (a CI run saw a
    count missing when it was taken after)."""
    assembled = assemble()
    before = requests_total(model="smollm2")
    seen_at_last_byte: list[float] = []
    payload = json.dumps(body).encode()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def transport_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            seen_at_last_byte.append(requests_total(model="smollm2") - before)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(payload)).encode())],
             "scheme": "http", "server": ("t", 80), "client": ("c", 1)}
    asyncio.run(assembled.app(scope, receive, transport_send))
    assert seen_at_last_byte == [1.0]


def test_an_answer_sent_after_the_client_left_counts_as_aborted() -> None:
    """vLLM notices a disconnect itself and answers 400 "Client disconnected" to nobody: the
    request is counted ``aborted`` (the client left), not ``client_error`` (a CI run saw the
    400 win once the count moved to the last byte)."""
    from runtime.protocol.gate import _run_cancellable

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the body
        assert (await receive())["type"] == "http.disconnect"  # vLLM's is_disconnected()
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"Client disconnected"})

    body = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> dict[str, Any]:
        return body.pop() if body else {"type": "http.disconnect"}

    async def transport_send(message: dict[str, Any]) -> None:
        return None

    seen: list[int | None] = []
    asyncio.run(_run_cancellable(app, {"type": "http"}, receive, transport_send,
                                 on_last_byte=seen.append))
    assert seen == [None]  # the gate's counter makes None "aborted"
