"""Unit tier: ModelStreamInfer behind the pipeline interceptor, in-process on a fake engine.

Why: the key, readiness, model resolution and the one outcome count per streamed request are
the pipeline's; they are checked here in milliseconds with the same interceptor and handler
objects the runtime installs (the engine's own behaviour is test_triton_stream.py's).
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import grpc
import pytest
from grpc import aio
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from runtime.lifecycle import State
from runtime.model import LLMModel
from runtime.protocol.grpc_server import PipelineInterceptor, StreamInfer
from tests.runtime.test_triton_codec import _stream_response_class
from tests.support.app import assemble

METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


def infer_request(prompt: str, model: str = "smollm2", stream: bool = True,
                  **params: Any) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, id=prompt, inputs=[
        pb.ModelInferRequest.InferInputTensor(
            name="text_input", datatype="BYTES", shape=[1],
            contents=pb.InferTensorContents(bytes_contents=[prompt.encode()]))])
    req.parameters["stream"].bool_param = stream
    for key, value in params.items():
        req.parameters[key].int64_param = value
    return req


async def _serve(parts: Any, model_class: type[LLMModel] = LLMModel) -> tuple[Any, int]:
    """An in-process gRPC server with the stream handler and the pipeline interceptor, on the
    assembled app's fake engine; returns (server, port)."""
    model = model_class("smollm2", parts.engine, parts.lifecycle, parts.pipeline)
    data_plane = types.SimpleNamespace(get_model_from_registry=lambda name: model)
    server = aio.server(interceptors=(PipelineInterceptor(parts.pipeline),))
    server.add_generic_rpc_handlers((StreamInfer(parts.pipeline, data_plane, 128).handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _exchange(requests: list[pb.ModelInferRequest], *, key: str | None = None,
                    state: State = State.READY) -> tuple[list[Any], Any]:
    """Send ``requests`` on one stream, one after the other, and collect every response."""
    parts = assemble(api_key=key, state=state) if key else assemble(state=state)
    server, port = await _serve(parts)
    response_class = _stream_response_class()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_stream(
                METHOD, request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=response_class.FromString)(
                metadata=(("authorization", f"Bearer {key}"),) if key else None)
            out = []
            for request in requests:
                await call.write(request)
                while True:
                    message = await call.read()
                    inner = pb.ModelInferResponse.FromString(message.infer_response)
                    out.append((message.error_message, inner))
                    final = inner.parameters.get("triton_final_response")
                    if message.error_message or (final is not None and final.bool_param):
                        break
            await call.done_writing()
            return out, parts
    finally:
        await server.stop(None)


def _text(inner: pb.ModelInferResponse) -> str:
    return b"".join(inner.outputs[0].contents.bytes_contents).decode() if inner.outputs else ""


def _count(outcome: str, model: str = "smollm2") -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("kserve_llm_requests_total", {
        "model": model, "protocol": "v2-grpc", "outcome": outcome}) or 0.0


def test_stream_answers_pieces_then_a_final_response() -> None:
    before = _count("success"), _count("client_error", "_other")
    out, _ = asyncio.run(_exchange([
        infer_request("a b c"),
        infer_request("x y", model="nope"),
        infer_request("one two", max_tokens=3, stream=False),
    ]))
    pieces = [inner for err, inner in out[:4]]
    assert [_text(p) for p in pieces] == ["c ", "b ", "a ", ""]
    assert [p.parameters["triton_final_response"].bool_param for p in pieces] == [
        False, False, False, True]
    assert pieces[-1].parameters["finish_reason"].string_param == "stop"
    error, inner = out[4]
    assert "nope" in error and inner.id == "x y"  # in-stream, correlated by id
    error, inner = out[5]
    assert not error and _text(inner) == "two one"
    assert inner.parameters["triton_final_response"].bool_param
    # One count per request read from the stream (an unknown model under "_other").
    assert (_count("success"), _count("client_error", "_other")) == (before[0] + 2,
                                                                     before[1] + 1)


def test_stream_checks_readiness_per_request() -> None:
    out, _ = asyncio.run(_exchange([infer_request("a")], state=State.DRAINING))
    assert "not ready" in out[0][0]


def test_stream_needs_the_key() -> None:
    out, _ = asyncio.run(_exchange([infer_request("a b")], key="sesame"))
    assert _text(out[0][1]) == "b "

    async def without_key() -> None:
        parts = assemble(api_key="sesame")
        server = aio.server(interceptors=(PipelineInterceptor(parts.pipeline),))
        server.add_generic_rpc_handlers((StreamInfer(parts.pipeline, None, 128).handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.stream_stream(
                    METHOD, request_serializer=pb.ModelInferRequest.SerializeToString)()
                await call.write(infer_request("a"))
                await call.read()
        finally:
            await server.stop(None)

    with pytest.raises(aio.AioRpcError) as err:
        asyncio.run(without_key())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_requests_on_one_stream_run_concurrently() -> None:
    """Both requests are written before any answer is read; each answer is told apart by
    its id, and the second (2 tokens) finishes while the first (12 tokens, 0.05 s each) is
    still streaming: served one after the other, every piece of the first would come first."""
    from tests.support.fake_engine import FakeEngine

    long, short = " ".join("abcdefghijkl"), "x y"

    async def go() -> tuple[dict[str, str], list[str]]:
        server, port = await _serve(assemble(engine=FakeEngine(delay=0.05)))
        texts: dict[str, str] = {}
        order: list[str] = []
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.stream_stream(
                    METHOD, request_serializer=pb.ModelInferRequest.SerializeToString,
                    response_deserializer=_stream_response_class().FromString)()
                await call.write(infer_request(long))
                await call.write(infer_request(short))
                await call.done_writing()
                async for message in call:
                    inner = pb.ModelInferResponse.FromString(message.infer_response)
                    texts[inner.id] = texts.get(inner.id, "") + _text(inner)
                    order.append(inner.id)
        finally:
            await server.stop(None)
        return texts, order

    texts, order = asyncio.run(go())
    assert texts == {long: " ".join(reversed(long.split())) + " ", short: "y x "}
    last_short = len(order) - 1 - order[::-1].index(short)
    assert long in order[last_short + 1:], order  # the long answer was still going


def test_a_rotated_key_stops_serving_an_open_stream(tmp_path: Any) -> None:
    """The key is checked for every request read from a stream, not once when it opened: after
    the key file changes, the stream's next request is refused in-band (and counted)."""
    key_file = tmp_path / "key"
    key_file.write_text("first-key")

    async def go() -> list[str]:
        parts = assemble(api_key_file=str(key_file))
        server, port = await _serve(parts)
        response_class = _stream_response_class()
        errors = []
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.stream_stream(
                    METHOD, request_serializer=pb.ModelInferRequest.SerializeToString,
                    response_deserializer=response_class.FromString)(
                    metadata=(("authorization", "Bearer first-key"),))
                for prompt in ("a b", "c d"):
                    await call.write(infer_request(prompt, stream=False))
                    errors.append((await call.read()).error_message)
                    key_file.write_text("second-key")  # rotated after the first answer
                await call.done_writing()
        finally:
            await server.stop(None)
        return errors

    before = _count("client_error")
    errors = asyncio.run(go())
    assert errors[0] == ""
    assert "API key" in errors[1], errors
    assert _count("client_error") == before + 1


def test_a_stream_holds_a_bounded_number_of_requests() -> None:
    """Requests beyond the stream's limit in flight are refused in-band (and counted
    ``rejected``); the stream keeps serving the others."""

    async def go() -> list[str]:
        parts = assemble()
        parts.engine.delay = 0.2  # each answer takes a while: the requests overlap
        model = LLMModel("smollm2", parts.engine, parts.lifecycle, parts.pipeline)
        data_plane = types.SimpleNamespace(get_model_from_registry=lambda name: model)
        server = aio.server(interceptors=(PipelineInterceptor(parts.pipeline),))
        server.add_generic_rpc_handlers(
            (StreamInfer(parts.pipeline, data_plane, max_requests=2).handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        response_class = _stream_response_class()
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.stream_stream(
                    METHOD, request_serializer=pb.ModelInferRequest.SerializeToString,
                    response_deserializer=response_class.FromString)()
                for prompt in ("a b", "c d", "e f"):
                    await call.write(infer_request(prompt, stream=False))
                await call.done_writing()
                return [m.error_message async for m in call]
        finally:
            await server.stop(None)

    before = _count("rejected")
    errors = asyncio.run(go())
    assert len(errors) == 3 and sum("already in flight" in e for e in errors) == 1, errors
    assert errors.count("") == 2
    assert _count("rejected") == before + 1


def test_grpc_tls_presents_the_certificate_and_its_replacement(tmp_path: Any) -> None:
    """server_credentials: the gRPC port speaks TLS with the HTTPS certificate files and, with
    refresh, a new handshake presents the files' new certificate."""
    from runtime.protocol.grpc_server import server_credentials
    from tests.support.tls import fingerprint, self_signed, served_fingerprint

    cert, key = self_signed(tmp_path)

    async def go() -> tuple[str, str, str]:
        server = aio.server()
        port = server.add_secure_port("127.0.0.1:0", server_credentials(str(cert), str(key),
                                                                         refresh=True))
        await server.start()
        try:
            first = await asyncio.to_thread(served_fingerprint, port)
            new_cert, new_key = self_signed(tmp_path, "next")
            key.write_bytes(new_key.read_bytes())
            cert.write_bytes(new_cert.read_bytes())
            second = await asyncio.to_thread(served_fingerprint, port)
            return first, second, fingerprint(new_cert)
        finally:
            await server.stop(None)

    old = fingerprint(cert)
    first, second, new = asyncio.run(go())
    assert first == old and second == new != old


def test_a_call_without_the_key_is_refused_before_its_message_is_parsed() -> None:
    """ModelInfer without the key: UNAUTHENTICATED (and counted) even when its bytes are not a
    message at all, because the key is read from the metadata before the payload is parsed
    (parsing first answered INTERNAL, after deserializing up to 8 MiB for a stranger)."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

    from runtime.protocol.grpc_server import RuntimeServicer

    async def go(metadata: Any) -> grpc.StatusCode:
        parts = assemble(api_key="sesame")
        server = aio.server(interceptors=(PipelineInterceptor(parts.pipeline),))
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            RuntimeServicer(None, None), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                infer = channel.unary_unary(
                    "/inference.GRPCInferenceService/ModelInfer",
                    request_serializer=lambda b: b, response_deserializer=lambda b: b)
                try:
                    await infer(b"\xff\xff\xff not a protobuf message", metadata=metadata)
                except aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK
        finally:
            await server.stop(None)

    before = _count("client_error")
    assert asyncio.run(go(None)) == grpc.StatusCode.UNAUTHENTICATED
    assert _count("client_error") == before + 1
    # with the key, the same bytes are parsed, and fail as a malformed message
    assert asyncio.run(go((("authorization", "Bearer sesame"),))) != grpc.StatusCode.UNAUTHENTICATED
