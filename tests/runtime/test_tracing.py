"""Unit tier: a server span per inference request on every transport (runtime/tracing.py).

Why: with vLLM's ``--otlp-traces-endpoint`` the runtime's part of a request (key, queueing,
protocol translation) must be one span in the caller's trace, with vLLM's ``llm_request`` as
its child; without it nothing is built or exported. The spans go to a real OTLP/gRPC receiver
in this process (tests/support/otlp.py) through the runtime's real exporter; the engine is the
fake one, and vLLM's side (the trace headers the runtime hands to vLLM's engine client) is
checked on ``InstrumentedEngineClient`` with a stub client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from grpc import aio
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from runtime import logs, tracing
from runtime.protocol.grpc_server import PipelineInterceptor, StreamInfer
from tests.runtime.test_pipeline import send
from tests.runtime.test_triton_codec import _stream_response_class
from tests.runtime.test_triton_pipeline import METHOD, infer_request
from tests.support.app import Assembled, assemble
from tests.support.otlp import Receiver

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}
V2 = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["a b"]}]}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def traced(receiver: Receiver) -> Iterator[Assembled]:
    """The app with tracing on, as ``--otlp-traces-endpoint`` turns it on."""
    parts = assemble(otlp_traces_endpoint=receiver.endpoint)
    assert parts.pipeline.tracing is not None
    yield parts
    parts.pipeline.tracing.shutdown()


def _flushed(parts: Assembled, receiver: Receiver) -> list[Any]:
    assert parts.pipeline.tracing is not None
    assert parts.pipeline.tracing.force_flush()
    return receiver.in_trace(TRACE)


@pytest.mark.parametrize("path, body, protocol, route", [
    ("/openai/v1/chat/completions", CHAT, "openai", "chat"),
    ("/v2/models/smollm2/infer", V2, "v2-rest", "infer"),
    ("/v2/models/smollm2/generate", {"text_input": "hi"}, "v2-generate", "generate"),
    ("/v2/models/smollm2/generate_stream", {"text_input": "hi"}, "v2-generate",
     "generate_stream"),
    ("/v1/models/smollm2:predict", {"instances": ["hi"]}, "v1-rest", "predict"),
])
def test_one_span_per_http_request_in_the_callers_trace(
        traced: Assembled, receiver: Receiver, path: str, body: Any, protocol: str,
        route: str) -> None:
    response = send(traced, "POST", path, body, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200, response.text
    [span] = _flushed(traced, receiver)
    assert span.name == f"{protocol} {route}"
    assert span.parent_span_id == PARENT
    assert span.service == tracing.SERVICE_NAME
    assert span.attributes["kserve.protocol"] == protocol
    assert span.attributes["kserve.route"] == route
    assert span.attributes["gen_ai.request.model"] == "smollm2"
    assert span.attributes["kserve.outcome"] == "success"
    assert span.attributes["kserve.request_id"] == response.headers["x-request-id"]


def test_a_refused_request_is_one_span_with_its_outcome(traced: Assembled,
                                                        receiver: Receiver) -> None:
    response = send(traced, "POST", "/v2/models/nope/infer", V2,
                    headers={"traceparent": TRACEPARENT})
    assert response.status_code == 404
    [span] = _flushed(traced, receiver)
    assert span.attributes["kserve.outcome"] == "client_error"
    assert span.attributes["gen_ai.request.model"] == "_other"


def test_without_a_traceparent_the_span_starts_a_trace(traced: Assembled,
                                                       receiver: Receiver) -> None:
    send(traced, "POST", "/openai/v1/chat/completions", CHAT)
    assert traced.pipeline.tracing is not None and traced.pipeline.tracing.force_flush()
    [span] = receiver.spans
    assert span.parent_span_id == "" and span.trace_id != TRACE


def test_log_lines_carry_the_trace_id(traced: Assembled) -> None:
    """A request's log line (here the 404's, logged by the gate after the pipeline's
    sequence) shows the trace id next to the request id."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.addFilter(logs.RequestIdFilter())
    handler.emit = lambda record: lines.append(  # type: ignore[method-assign]
        logging.Formatter(logs.FORMAT).format(record))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        send(traced, "POST", "/v2/models/nope/infer", V2,
             headers={"traceparent": TRACEPARENT, "x-request-id": "rid-1"})
    finally:
        root.removeHandler(handler)
    assert any(f"[rid-1 trace_id={TRACE}]" in line for line in lines), lines


async def _grpc_server(parts: Assembled) -> tuple[Any, int]:
    """ModelInfer (KServe's servicer on the runtime's data plane) and ModelStreamInfer behind
    the pipeline interceptor, in-process, on the assembled app's fake engine."""
    from kserve.model_repository import ModelRepository
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

    from runtime.dataplane import RuntimeDataPlane
    from runtime.protocol.grpc_server import RuntimeServicer
    from runtime.server import build_models
    from runtime.settings import RuntimeSettings

    repository = ModelRepository()
    build_models(repository, parts.engine, parts.lifecycle, parts.pipeline,
                 RuntimeSettings(model_name="smollm2", model_dir="/unused"))
    data_plane = RuntimeDataPlane(repository, parts.lifecycle)
    server = aio.server(interceptors=(PipelineInterceptor(parts.pipeline),))
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        RuntimeServicer(data_plane, None), server)
    server.add_generic_rpc_handlers((StreamInfer(parts.pipeline, data_plane, 128).handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def test_one_span_per_grpc_request_and_per_stream_message(traced: Assembled,
                                                          receiver: Receiver) -> None:
    metadata = (("traceparent", TRACEPARENT),)

    async def go() -> None:
        server, port = await _grpc_server(traced)
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                infer = channel.unary_unary(
                    "/inference.GRPCInferenceService/ModelInfer",
                    request_serializer=pb.ModelInferRequest.SerializeToString,
                    response_deserializer=pb.ModelInferResponse.FromString)
                await infer(infer_request("one", stream=False), metadata=metadata)
                call = channel.stream_stream(
                    METHOD, request_serializer=pb.ModelInferRequest.SerializeToString,
                    response_deserializer=_stream_response_class().FromString)(metadata=metadata)
                for prompt in ("two", "three"):
                    await call.write(infer_request(prompt))
                    while True:
                        message = await call.read()
                        inner = pb.ModelInferResponse.FromString(message.infer_response)
                        final = inner.parameters.get("triton_final_response")
                        if message.error_message or (final is not None and final.bool_param):
                            break
                await call.done_writing()
        finally:
            await server.stop(None)

    asyncio.run(go())
    spans = _flushed(traced, receiver)
    assert sorted(s.name for s in spans) == [
        "v2-grpc ModelInfer", "v2-grpc ModelStreamInfer", "v2-grpc ModelStreamInfer"]
    assert {s.parent_span_id for s in spans} == {PARENT}
    assert {s.attributes["kserve.outcome"] for s in spans} == {"success"}
    assert len({s.span_id for s in spans}) == 3


def test_vllm_gets_the_runtimes_span_as_trace_headers(traced: Assembled) -> None:
    """The one place the runtime calls vLLM's engine: its ``trace_headers`` name the runtime's
    span (so vLLM's llm_request span is its child), replacing the caller's headers vLLM's
    OpenAI serving code passes; the engine's token counts land on the span."""
    from runtime.admission import Admission
    from runtime.engine.vllm_client import InstrumentedEngineClient

    seen: dict[str, Any] = {}

    async def outputs() -> Any:
        yield types.SimpleNamespace(prompt_token_ids=[1, 2, 3], metrics=None, outputs=[
            types.SimpleNamespace(token_ids=[7, 8])])

    def generate(prompt: Any, params: Any, request_id: str, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return outputs()

    client = InstrumentedEngineClient(types.SimpleNamespace(generate=generate), "smollm2",
                                      Admission("smollm2", 4, None))
    assert traced.pipeline.tracing is not None

    async def go() -> tracing.RequestSpan:
        with traced.pipeline.request("v2-rest", "smollm2", route="infer",
                                     carrier={"traceparent": TRACEPARENT}):
            handle = tracing.current.get()
            assert handle is not None
            async for _ in client.generate("p", None, "r1",
                                           trace_headers={"traceparent": TRACEPARENT}):
                pass
            return handle

    handle = asyncio.run(go())
    assert seen["trace_headers"] == {"traceparent": handle.traceparent}
    assert handle.traceparent.startswith(f"00-{TRACE}-") and PARENT not in handle.traceparent
    assert (handle.prompt_tokens, handle.completion_tokens) == (3, 2)
    assert tracing.current.get() is None


def test_untraced_engine_requests_keep_their_headers() -> None:
    from runtime.admission import Admission
    from runtime.engine.vllm_client import InstrumentedEngineClient

    seen: dict[str, Any] = {}

    async def outputs() -> Any:
        for _ in ():
            yield None

    def generate(prompt: Any, params: Any, request_id: str, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return outputs()

    client = InstrumentedEngineClient(types.SimpleNamespace(generate=generate), "smollm2",
                                      Admission("smollm2", 4, None))

    async def go() -> None:
        async for _ in client.generate("p", None, "r1", trace_headers={"traceparent": "x"}):
            pass

    asyncio.run(go())
    assert seen["trace_headers"] == {"traceparent": "x"}


def test_tracing_off_builds_nothing_and_exports_nothing(receiver: Receiver) -> None:
    """No endpoint: no tracer, no span, nothing exported, even with OpenTelemetry's own
    endpoint variable pointing at a receiver and a traceparent on the request; and, in a
    fresh process, OpenTelemetry is not even imported."""
    parts = assemble()
    assert parts.pipeline.tracing is None
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = receiver.endpoint
    try:
        response = send(parts, "POST", "/openai/v1/chat/completions", CHAT,
                        headers={"traceparent": TRACEPARENT})
    finally:
        del os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    assert response.status_code == 200
    assert receiver.spans == []
    code = ("import sys; from tests.support.app import assemble; "
            "from tests.runtime.test_pipeline import send; p = assemble(); "
            "send(p, 'POST', '/openai/v1/chat/completions', "
            "{'model': 'smollm2', 'messages': [{'role': 'user', 'content': 'hi'}]}); "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_endpoint_is_vllms_flag_read_by_the_runtime_too() -> None:
    from runtime import cli

    for argv in (["--otlp-traces-endpoint", "grpc://c:4317"],
                 ["--otlp_traces_endpoint=grpc://c:4317"]):
        settings = cli.parse(["--model_dir", "m", *argv, "--collect-detailed-traces", "all"])
        assert settings.otlp_traces_endpoint == "grpc://c:4317"
        assert settings.engine_argv == [*argv, "--collect-detailed-traces", "all"]  # vLLM's too
    assert cli.parse(["--model_dir", "m"]).otlp_traces_endpoint is None
    from runtime import serve_cli  # the `vllm serve` contract: the same flag, the same meaning

    settings = serve_cli.parse(["m", "--otlp-traces-endpoint", "grpc://c:4317"])
    assert settings.otlp_traces_endpoint == "grpc://c:4317"
    assert "--otlp-traces-endpoint" in settings.engine_argv


def test_the_exporter_is_vllms(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPExporter,
    )

    assert isinstance(tracing.span_exporter("grpc://c:4317"), OTLPSpanExporter)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    assert isinstance(tracing.span_exporter("http://c:4318/v1/traces"), HTTPExporter)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift")
    with pytest.raises(ValueError):
        tracing.span_exporter("c")
