"""Unit tier: README claims about keys, server faults, request ids and the v2 REST contract,
checked on the predictor's real HTTP app and on KServe's gRPC servicer behind the runtime's
interceptor, both in process around a fake engine (no vLLM engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio
from kserve.model_repository import ModelRepository
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from runtime.dataplane import RuntimeDataPlane
from runtime.lifecycle import State
from runtime.logs import RequestIdFilter
from runtime.model import LLMModel
from runtime.protocol.grpc_server import PipelineInterceptor, RuntimeServicer
from tests.runtime.test_pipeline import CHAT, V2, send
from tests.runtime.test_triton_pipeline import infer_request
from tests.support.app import Assembled, assemble
from tests.support.fake_engine import FakeEngine


class Probe(FakeEngine):
    """The fake engine, recording the ``stream`` flag each request was prepared with and the
    most prompts in flight at once; raises ``fault`` from every answer when set; a prompt
    starting with "long" finishes with ``length``."""

    def __init__(self, fault: Exception | None = None) -> None:
        super().__init__(delay=0.01)
        self.fault = fault
        self.prepared_stream: list[bool] = []
        self.in_flight = self.peak = 0

    def prepare(self, prompts: list[str], params: dict[str, Any], **kw: Any) -> Any:
        self.prepared_stream.append(kw["stream"])
        return super().prepare(prompts, params, **kw)

    async def complete(self, request: Any) -> Any:
        if self.fault:
            raise self.fault
        self.in_flight += request.prompts
        self.peak = max(self.peak, self.in_flight)
        try:
            done = await super().complete(request)
        finally:
            self.in_flight -= request.prompts
        return [dataclasses.replace(c, finish_reason="length")
                if item["prompt"].startswith("long") else c
                for c, item in zip(done, request.items, strict=True)]

    async def stream(self, request: Any) -> Any:
        if self.fault:
            raise self.fault
        return await super().stream(request)

    async def openai_respond(self, kind: str, request: Any, raw_request: Any) -> Any:
        if self.fault:
            raise self.fault
        return await super().openai_respond(kind, request, raw_request)


@contextlib.asynccontextmanager
async def grpc_stub(parts: Assembled) -> AsyncIterator[Any]:
    """KServe's gRPC servicer behind the runtime's pipeline interceptor, on the assembled
    app's pipeline and engine, as ``RuntimeGRPCServer`` builds it; yields a client stub."""
    registry = ModelRepository()
    registry.update(LLMModel("smollm2", parts.engine, parts.lifecycle, parts.pipeline))
    server = aio.server(interceptors=(PipelineInterceptor(parts.pipeline),))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        RuntimeServicer(RuntimeDataPlane(registry, parts.lifecycle), None), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.GRPCInferenceServiceStub(channel)
    finally:
        await server.stop(None)


def grpc_infer(parts: Assembled, *requests: Any,
               metadata: tuple[tuple[str, str], ...] = ()) -> list[Any]:
    """ModelInfer each request; each result is (response or AioRpcError, its request id)."""
    async def go() -> list[Any]:
        out = []
        async with grpc_stub(parts) as stub:
            for request in requests:
                call = stub.ModelInfer(request, metadata=metadata)
                try:
                    result: Any = await call
                except aio.AioRpcError as err:
                    result = err
                given = [*(await call.initial_metadata() or ()),
                         *(await call.trailing_metadata() or ())]
                out.append((result, dict(given).get("x-request-id")))
        return out

    return asyncio.run(go())


def requests_counted(parts: Assembled, **labels: str) -> float:
    """``kserve_llm_requests_total`` with ``labels``, read from the app's ``/metrics`` text."""
    text = send(parts, "GET", "/metrics").text
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == "kserve_llm_requests_total"
               and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog whose records carry ``request_id`` (the runtime's own filter, runtime/logs.py)."""
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.INFO)
    return caplog


def test_api_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """README: the API key is "compared in constant time" (HTTP Bearer and gRPC metadata)."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    parts = assemble(api_key="sesame")
    sent = [b"sesame", b"x", b"sesamf"]  # right, shorter, same length
    statuses = [send(parts, "POST", "/v2/models/smollm2/generate", {"text_input": "a"},
                     {"authorization": f"Bearer {key.decode()}"}).status_code for key in sent]
    assert statuses == [200, 401, 401]
    assert compared == [(key, b"sesame") for key in sent]
    compared.clear()
    codes = []
    for key in sent:
        [(result, _)] = grpc_infer(parts, infer_request("a", stream=False),
                                   metadata=(("authorization", f"Bearer {key.decode()}"),))
        codes.append(result.code() if isinstance(result, aio.AioRpcError) else grpc.StatusCode.OK)
    assert codes == [grpc.StatusCode.OK] + [grpc.StatusCode.UNAUTHENTICATED] * 2
    # every comparison constant-time (gRPC reads the key once before parsing the message,
    # once in the pipeline's sequence)
    assert compared and set(compared) == {(key, b"sesame") for key in sent}


FAULTS = [  # route, body, protocol label
    ("/openai/v1/chat/completions", CHAT, "openai"),
    ("/v1/completions", {"model": "smollm2", "prompt": "a b"}, "openai"),
    ("/v2/models/smollm2/infer", V2, "v2-rest"),
    ("/v2/models/smollm2/generate", {"text_input": "a b"}, "v2-generate"),
    ("/v2/models/smollm2/generate_stream", {"text_input": "a b"}, "v2-generate"),
    ("/v1/models/smollm2:predict", {"instances": ["a b"]}, "v1-rest"),
]


def assert_logged_once_with_traceback(logged: pytest.LogCaptureFixture, rid: str) -> None:
    errors = [r for r in logged.records if r.levelno >= logging.ERROR]
    assert [r.request_id for r in errors] == [rid] * len(errors)  # type: ignore[attr-defined]
    tracebacks = [r for r in errors if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in errors]
    assert "RuntimeError: engine bug" in logging.Formatter().formatException(
        tracebacks[0].exc_info)  # type: ignore[arg-type]


@pytest.mark.parametrize("path,body,protocol", FAULTS, ids=[f[0] for f in FAULTS])
def test_server_fault_is_a_5xx_counted_and_logged(path: str, body: Any, protocol: str,
                                                  logged: pytest.LogCaptureFixture) -> None:
    """README: server fault -> 5xx in protocol shape, `server_error`, id + traceback logged."""
    parts = assemble(engine=Probe(fault=RuntimeError("engine bug")))
    before = requests_counted(parts, protocol=protocol, outcome="server_error")
    logged.clear()
    r = send(parts, "POST", path, body, {"x-request-id": "fault-1"})
    assert 500 <= r.status_code < 600 and r.headers.get("x-request-id") == "fault-1", r.text
    error = r.json()["error"]
    if protocol == "openai":
        assert isinstance(error, dict) and error["code"] == r.status_code, error
        assert isinstance(error["message"], str), error
    else:
        assert isinstance(error, str), error
    assert_logged_once_with_traceback(logged, "fault-1")
    assert requests_counted(parts, protocol=protocol, outcome="server_error") - before == 1


def test_server_fault_on_grpc(logged: pytest.LogCaptureFixture) -> None:
    """README: a server fault on gRPC is INTERNAL, `server_error`, logged with id + traceback."""
    parts = assemble(engine=Probe(fault=RuntimeError("engine bug")))
    before = requests_counted(parts, protocol="v2-grpc", outcome="server_error")
    logged.clear()
    [(err, _)] = grpc_infer(parts, infer_request("a b", stream=False),
                            metadata=(("x-request-id", "fault-2"),))
    assert isinstance(err, aio.AioRpcError) and err.code() == grpc.StatusCode.INTERNAL
    assert err.details()
    assert_logged_once_with_traceback(logged, "fault-2")
    assert requests_counted(parts, protocol="v2-grpc", outcome="server_error") - before == 1


def test_grpc_calls_carry_their_request_id(logged: pytest.LogCaptureFixture) -> None:
    """README: gRPC interceptor request id: `x-request-id` (client's or new) returned and logged."""
    parts = assemble()
    [(ok, given)] = grpc_infer(parts, infer_request("a b", stream=False),
                               metadata=(("x-request-id", "grpc-7"),))
    assert not isinstance(ok, aio.AioRpcError) and given == "grpc-7"
    [(ok, generated)] = grpc_infer(parts, infer_request("a b", stream=False))
    assert not isinstance(ok, aio.AioRpcError) and generated and generated != "grpc-7"
    logged.clear()
    [(err, given)] = grpc_infer(parts, infer_request("a", model="nope", stream=False),
                                metadata=(("x-request-id", "grpc-8"),))
    assert isinstance(err, aio.AioRpcError) and err.code() == grpc.StatusCode.NOT_FOUND
    assert given == "grpc-8"
    lines = [r for r in logged.records if r.name.startswith("runtime")]
    assert lines and all(r.request_id == "grpc-8" for r in lines)  # type: ignore[attr-defined]


def test_grpc_refusals_carry_retry_after() -> None:
    """README: 503/429 come with Retry-After; on gRPC it is a `retry-after` trailing-metadata
    entry (seconds) on UNAVAILABLE / RESOURCE_EXHAUSTED, as on HTTP; other errors have none."""
    async def call(parts: Assembled, request: Any) -> tuple[Any, dict[str, str]]:
        async with grpc_stub(parts) as stub:
            rpc = stub.ModelInfer(request)
            with pytest.raises(aio.AioRpcError) as err:
                await rpc
            return err.value.code(), dict(await rpc.trailing_metadata() or ())

    code, trailing = asyncio.run(call(assemble(state=State.DRAINING),
                                      infer_request("a b", stream=False)))
    assert code == grpc.StatusCode.UNAVAILABLE and trailing.get("retry-after") == "5"
    code, trailing = asyncio.run(call(assemble(), infer_request("a", model="nope",
                                                                stream=False)))
    assert code == grpc.StatusCode.NOT_FOUND and "retry-after" not in trailing


def v2(data: Any, shape: list[int], *extra: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": shape,
                        "data": data}, *extra], "parameters": params}


def test_v2_infer_answer_carries_finish_reasons_in_prompt_order() -> None:
    """README: v2 infer answers carry `finish_reason` per prompt, in order ("stop,length")."""
    r = send(assemble(engine=Probe()), "POST", "/v2/models/smollm2/infer",
             v2(["a b", "long c d", "e"], [3]))
    assert r.status_code == 200, r.text
    assert r.json()["parameters"] == {"finish_reason": "stop,length,stop",
                                      "prompt_tokens": 6, "completion_tokens": 6}


def test_v1_predict_answer_carries_finish_reasons() -> None:
    """README: `:predict` -> {"predictions": [...], "finish_reasons": ["stop"]}."""
    r = send(assemble(engine=Probe()), "POST", "/v1/models/smollm2:predict",
             {"instances": ["long a b", "c d"]})
    assert r.json() == {"predictions": ["b a long", "d c"], "finish_reasons": ["length", "stop"]}


@pytest.mark.parametrize("data", [[["a b"], ["c d"], ["e"]], ["a b", "c d", "e"]],
                         ids=["nested", "flat"])
def test_v2_text_input_of_shape_b_by_1(data: list[Any]) -> None:
    """README: `text_input` BYTES `[B]` (or `[B, 1]`): B prompts, answered in order."""
    r = send(assemble(), "POST", "/v2/models/smollm2/infer", v2(data, [3, 1]))
    assert r.status_code == 200, r.text
    [out] = r.json()["outputs"]
    assert (out["name"], out["shape"], out["data"]) == ("text_output", [3], ["b a", "d c", "e"])
    bad = send(assemble(), "POST", "/v2/models/smollm2/infer", v2(["a", "b"], [1, 2]))
    assert bad.status_code == 400 and "[B, 1]" in bad.json()["error"]


def test_v2_prompts_of_one_request_run_concurrently() -> None:
    """README: B prompts, "each becomes one engine request, all running concurrently"."""
    parts = assemble(engine=Probe())
    r = send(parts, "POST", "/v2/models/smollm2/infer", v2(["a", "b", "c", "d"], [4]))
    assert r.status_code == 200, r.text
    assert parts.engine.peak == 4  # type: ignore[attr-defined]


STREAM_TENSOR = {"name": "stream", "datatype": "BOOL", "shape": [1], "data": [True]}


def test_stream_tensor_is_ignored_by_unary_infer() -> None:
    """README: the `stream` tensor is "ignored by unary infer, which cannot stream"."""
    parts = assemble(engine=Probe())
    for body in (v2(["a b c"], [1], STREAM_TENSOR), v2(["a b c"], [1], stream=True)):
        r = send(parts, "POST", "/v2/models/smollm2/infer", body)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == ["c b a"]
    [(answer, _)] = grpc_infer(parts, infer_request("a b c", stream=True))
    assert not isinstance(answer, aio.AioRpcError), answer
    assert answer.outputs[0].contents.bytes_contents == [b"c b a"]
    assert parts.engine.prepared_stream == [False, False, False]  # type: ignore[attr-defined]


@pytest.mark.parametrize("path,body,status", [
    ("/v2/models/smollm2/generate", {"text_input": "a b"}, 200),
    ("/v2/models/smollm2/generate", {"text_input": 5}, 400),
    ("/v2/models/nope/generate", {"text_input": "a"}, 404),
    ("/openai/v1/chat/completions", {"model": "smollm2", "messages": "x"}, 400),
    ("/v1/models/smollm2:predict", {"instances": ["a b"]}, 500),
], ids=["success", "bad-json-type", "unknown-model", "openai-400", "server-fault"])
def test_every_log_line_of_a_request_carries_its_id(path: str, body: Any, status: int,
                                                    logged: pytest.LogCaptureFixture) -> None:
    """README: every runtime log line shows the request id. Whatever a request logs, from
    any logger (the runtime's, KServe's timing middleware), carries the id the client sent.
    (The timing lines showed ``-`` until the id moved to the outermost ASGI layer.)"""
    fault = RuntimeError("engine bug") if status == 500 else None
    parts = assemble(engine=Probe(fault=fault))
    logged.clear()
    r = send(parts, "POST", path, body, {"x-request-id": "every-1"})
    assert r.status_code == status, r.text
    lines = [(rec.name, rec.request_id) for rec in logged.records  # type: ignore[attr-defined]
             if not rec.name.startswith("httpx")]  # the test's own client logs the call
    assert all(rid == "every-1" for _, rid in lines), lines
    # KServe's timing lines (its middleware sits outside the runtime's gate) are among them
    assert "kserve.trace" in {name for name, _ in lines}, lines
