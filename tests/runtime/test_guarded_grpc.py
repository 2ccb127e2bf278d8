"""The key on gRPC, against the real process (the session's guarded server, its key from a
file): a rotated key stops an open ModelStreamInfer stream, and a call without the key is
refused before its message is parsed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from grpc import aio
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from tests.conftest import GUARDED_KEY
from tests.runtime.test_triton_codec import _stream_response_class
from tests.runtime.test_triton_pipeline import METHOD, infer_request
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


def test_a_rotated_key_stops_an_open_model_stream_infer(guarded_server: ServerProcess,
                                                        guarded_key_file: Path) -> None:
    """The key is checked for every request read from a stream: after the key file changes,
    the open stream's next request gets an in-band UNAUTHENTICATED-style error."""

    async def go() -> list[str]:
        errors = []
        async with aio.insecure_channel(f"127.0.0.1:{guarded_server.grpc_port}") as channel:
            call = channel.stream_stream(
                METHOD, request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=_stream_response_class().FromString)(
                metadata=(("authorization", f"Bearer {GUARDED_KEY}"),))
            for prompt in ("Hello", "Hello again"):
                await call.write(infer_request(prompt, stream=False, max_tokens=2))
                errors.append((await call.read()).error_message)
                guarded_key_file.write_text("rotated-key\n")  # after the first answer
            await call.done_writing()
        return errors

    try:
        errors = asyncio.run(go())
    finally:
        guarded_key_file.write_text(GUARDED_KEY + "\n")
        time.sleep(0.1)
    assert errors[0] == "", errors
    assert "API key" in errors[1], errors


def test_a_call_without_the_key_is_refused_before_parsing(guarded_server: ServerProcess) -> None:
    """Bytes that are no message at all, sent without the key: UNAUTHENTICATED (the key is
    read before the payload is parsed); with the key, the same bytes fail as malformed."""

    async def infer(metadata: tuple[tuple[str, str], ...] | None) -> grpc.StatusCode:
        async with aio.insecure_channel(f"127.0.0.1:{guarded_server.grpc_port}") as channel:
            unary = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                        request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
            try:
                await unary(b"\xff\xff\xff not a protobuf message", metadata=metadata,
                            timeout=30)
            except aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    assert asyncio.run(infer(None)) == grpc.StatusCode.UNAUTHENTICATED
    keyed = asyncio.run(infer((("authorization", f"Bearer {GUARDED_KEY}"),)))
    assert keyed not in (grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED), keyed
