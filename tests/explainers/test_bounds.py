"""Issue 24 item 4, fast tier: what one caller can make the explainer do, with stand-in
predictors (no engine).

- the body cap (``--max_request_bytes``): 413 from the ``Content-Length`` without reading a
  byte, and for a chunked body at the chunk that passes the cap, never the next one;
- the concurrency cap (``--max_concurrent_requests``): one more request gets 429 with
  ``Retry-After`` before its body is read, and a slot frees when a request ends;
- the forward passes of a whole body (``--max_request_budget``, default ``--max_budget``):
  8 instances x 1024 passes is refused with a 400 before any predictor call;
- ``:predict`` sends the predictor the explainer's own predictor key, never the caller's
  ``Authorization``;
- errors name no predictor address (it is logged);
- liveness never asks the predictor (readiness does), and the examples probe liveness there.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from explainers.errors import ClientError, ExplainerError
from explainers.explainer import Explainer
from explainers.gate import RequestGate
from explainers.predictor import PredictorClient
from explainers.server import (
    ExplainerDataPlane,
    LLMExplainerModel,
    build_explainer,
    build_parser,
)
from runtime.auth import ApiKey

KSERVE_ARGS = ["--model_name=smollm2", "--predictor_host=127.0.0.1:1"]
ROOT = Path(__file__).resolve().parents[2]
EXPLAIN = "/v1/models/smollm2:explain"


# --- the body cap and the concurrency cap (the ASGI layer in front of KServe) ---------------

class Recorder:
    """An ASGI app that reads the whole body and answers 200; ``release`` holds it open."""

    def __init__(self, hold: bool = False) -> None:
        self.bodies: list[bytes] = []
        self.release = asyncio.Event()
        self.hold = hold

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        if self.hold and scope["method"] != "GET":
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(app, chunks: list[bytes], *, content_length: int | None = None,
               path: str = EXPLAIN, method: str = "POST") -> tuple[dict, int]:
    """One request through ``app``; returns the response (status, headers, body) and how many
    body chunks the app stack read."""
    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": headers,
             "query_string": b""}
    pending = list(chunks)
    read = 0
    response: dict[str, Any] = {"body": b""}

    async def receive():
        nonlocal read
        if not pending:
            await asyncio.sleep(3600)  # a client that sends nothing more
        read += 1
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message):
        if message["type"] == "http.response.start":
            response["status"] = message["status"]
            response["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            response["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return response, read


def test_body_over_the_cap_is_413_before_reading_it() -> None:
    inner = Recorder()
    gate = RequestGate(inner, max_request_bytes=100, max_concurrent_requests=4)
    response, read = asyncio.run(call(gate, [b"x" * 101], content_length=101))
    assert response["status"] == 413
    assert read == 0 and inner.bodies == []  # not a byte read, the app never ran
    assert b"exceeds the limit of 100 bytes (--max_request_bytes)" in response["body"]
    assert b'"type": "PayloadTooLarge"' in response["body"]


def test_chunked_body_is_refused_at_the_chunk_that_passes_the_cap() -> None:
    inner = Recorder()
    gate = RequestGate(inner, max_request_bytes=100, max_concurrent_requests=4)
    chunks = [b"x" * 60, b"x" * 60, b"x" * 60]  # no Content-Length: the second passes 100
    response, read = asyncio.run(call(gate, chunks))
    assert response["status"] == 413 and read == 2 and inner.bodies == []


def test_body_at_the_cap_reaches_the_app_whole() -> None:
    inner = Recorder()
    gate = RequestGate(inner, max_request_bytes=100, max_concurrent_requests=4)
    response, _ = asyncio.run(call(gate, [b"a" * 50, b"b" * 50]))
    assert response["status"] == 200 and inner.bodies == [b"a" * 50 + b"b" * 50]
    response, _ = asyncio.run(call(gate, [b"c" * 100], content_length=100))
    assert response["status"] == 200 and inner.bodies[-1] == b"c" * 100


def test_one_request_over_the_concurrency_cap_is_429_with_retry_after() -> None:
    async def scenario() -> None:
        inner = Recorder(hold=True)
        gate = RequestGate(inner, max_request_bytes=100, max_concurrent_requests=2)
        running = [asyncio.create_task(call(gate, [b"{}"])) for _ in range(2)]
        while len(inner.bodies) < 2:
            await asyncio.sleep(0.01)
        (response, read) = await call(gate, [b"{}"])
        assert response["status"] == 429 and read == 0
        assert response["headers"]["retry-after"] == "1"
        assert b"(--max_concurrent_requests)" in response["body"]
        # probes and GETs are never counted
        (live, _) = await call(gate, [b""], path="/v2/health/live", method="GET")
        assert live["status"] == 200
        inner.release.set()
        for task in running:
            assert (await task)[0]["status"] == 200
        inner.release = asyncio.Event()
        inner.release.set()
        assert (await call(gate, [b"{}"]))[0]["status"] == 200  # the slots are free again

    asyncio.run(scenario())


def test_gate_flags_and_their_defaults() -> None:
    args = build_parser().parse_args(KSERVE_ARGS)
    assert (args.max_request_bytes, args.max_concurrent_requests,
            args.max_request_budget) == (1024 * 1024, 4, None)


# --- forward passes per request body ----------------------------------------------------------

class ReachedThePredictor(Exception):
    """Raised by the stand-in predictor: the request passed every check."""


async def _stop(*_args: Any, **_kwargs: Any) -> Any:
    raise ReachedThePredictor


def built(model_dir: str, *extra: str) -> Explainer:
    explainer, _key = build_explainer(
        build_parser().parse_args([*KSERVE_ARGS, f"--model_dir={model_dir}", *extra]))
    explainer.client.score = _stop  # type: ignore[method-assign]
    explainer.client.generate = _stop  # type: ignore[method-assign]
    return explainer


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_instances_times_passes_is_bounded_before_any_predictor_call(model_dir: str) -> None:
    explainer = built(model_dir)
    # each instance alone fits --max_budget (1024); eight of them do not fit one body.
    # The first instance has no response: were it run before the check, it would call the
    # predictor (generate) and raise ReachedThePredictor instead of the 400.
    one = {"prompt": words(200), "granularity": "word", "method": "leave_one_out"}
    with pytest.raises(ClientError) as info:
        asyncio.run(explainer.explain_body({"instances": [one] * 8}))
    msg = info.value.message
    assert "8 explanations need" in msg and "the limit is 1024 (--max_request_budget)" in msg
    # the same instance alone reaches the predictor
    with pytest.raises(ReachedThePredictor):
        asyncio.run(explainer.explain_body({"instances": [one]}))


def test_max_request_budget_flag(model_dir: str) -> None:
    explainer = built(model_dir, "--max_request_budget=10")
    one = {"prompt": "Alice lives in Paris. Bob lives in Rome.", "response": "Rome"}
    # 2 features: 1 baseline + 2 + deletion test (1 + 2 subsets) = 6 passes each
    with pytest.raises(ReachedThePredictor):
        asyncio.run(explainer.explain_body({"instances": [one]}))
    with pytest.raises(ClientError) as info:
        asyncio.run(explainer.explain_body({"instances": [one, one]}))
    assert "2 explanations need 12 forward passes together (6, 6)" in info.value.message
    assert "the limit is 10 (--max_request_budget)" in info.value.message


# --- :predict and the caller's Authorization --------------------------------------------------

def fake_predictor(seen: list[httpx.Request], status: int = 200) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json={"predictions": ["ok"]} if status == 200
                              else {"error": "bad input"})
    return httpx.MockTransport(handler)


def client_with(transport: httpx.AsyncBaseTransport, key: str | None = None) -> PredictorClient:
    client = PredictorClient(url="http://10.1.2.3:8080", model="smollm2", timeout=5,
                             api_key=ApiKey(key) if key else ApiKey())
    client._client = httpx.AsyncClient(transport=transport, base_url=client.url)
    return client


def test_predict_sends_the_explainers_predictor_key_not_the_callers() -> None:
    seen: list[httpx.Request] = []
    client = client_with(fake_predictor(seen), key="predictor-key")
    model = LLMExplainerModel("smollm2", Explainer.__new__(Explainer))
    model.explainer.client = client
    caller = {"authorization": "Bearer caller-key", "x-request-id": "r-1",
              "cookie": "session=abc"}
    out = asyncio.run(model.predict({"instances": ["hi"]}, caller))
    assert out == {"predictions": ["ok"]}
    [request] = seen
    assert request.url.path == "/v1/models/smollm2:predict"
    assert request.headers["authorization"] == "Bearer predictor-key"
    assert request.headers["x-request-id"] == "r-1" and "cookie" not in request.headers
    # without a predictor key, nothing: the caller's key is never passed on
    seen.clear()
    model.explainer.client = client_with(fake_predictor(seen))
    asyncio.run(model.predict({"instances": ["hi"]}, caller))
    assert "authorization" not in seen[0].headers


def test_predict_error_is_the_predictors_status_without_its_address() -> None:
    seen: list[httpx.Request] = []
    model = LLMExplainerModel("smollm2", Explainer.__new__(Explainer))
    model.explainer.client = client_with(fake_predictor(seen, status=400))
    with pytest.raises(ClientError) as info:
        asyncio.run(model.predict({"instances": ["hi"]}, {}))
    assert "bad input" in info.value.message and "10.1.2.3" not in info.value.message


# --- errors never name the predictor's address ------------------------------------------------

def raising(exc: Exception) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc
    return httpx.MockTransport(handler)


@pytest.mark.parametrize("exc,status,needle", [
    (httpx.ConnectError("[Errno 111] connect to 10.1.2.3:8080 refused"), 502,
     "cannot reach the predictor"),
    (httpx.ReadTimeout("timed out reading from 10.1.2.3:8080"), 504,
     "the predictor did not answer within 5 s"),
])
def test_predictor_errors_name_no_address(exc: Exception, status: int, needle: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    client = client_with(raising(exc))
    with caplog.at_level(logging.WARNING, logger="explainers"), \
            pytest.raises(ExplainerError) as info:
        asyncio.run(client.generate([1, 2], 4))
    assert info.value.status == status and needle in info.value.message
    assert "10.1.2.3" not in info.value.message and "8080" not in info.value.message
    assert "http://10.1.2.3:8080" in caplog.text  # the operator sees where


# --- liveness does not depend on the predictor ------------------------------------------------

def test_liveness_never_asks_the_predictor_readiness_does() -> None:
    seen: list[httpx.Request] = []
    client = client_with(fake_predictor(seen, status=503))
    plane = ExplainerDataPlane({}, client)
    assert asyncio.run(plane.live()) == {"status": "alive"} and seen == []
    assert asyncio.run(plane.ready()) is False and seen  # readiness follows the predictor


@pytest.mark.parametrize("example", ["smollm2-standard-cpu", "smollm2-knative-cpu"])
def test_examples_probe_the_explainers_own_liveness(example: str) -> None:
    docs = yaml.safe_load_all((ROOT / "servingruntimes/examples" / f"{example}.yaml").read_text())
    [isvc] = [d for d in docs if d and d.get("kind") == "InferenceService"]
    [container] = isvc["spec"]["explainer"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
