"""Unit tier: ModelStreamInfer's messages written straight from the engine's deltas
(``LLMModel.stream_messages``, ``runtime.protocol.triton_stream``) are the messages the KServe
path wrote (``stream_predict`` -> ``InferResponse.to_grpc()`` -> ``SerializeToString()``).

Why: the fast path exists only to spend less CPU per token; a client must not be able to tell
it from the reference. Each request is answered both ways on a scripted fake engine and the
bytes are parsed back and compared message by message (protobuf maps compare regardless of
order), errors included; then the same over a real in-process gRPC stream.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
from grpc import aio
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import InferRequest

from runtime.engine.base import Delta, PreparedRequest
from runtime.errors import ServingError
from runtime.model import LLMModel
from runtime.protocol import triton
from tests.runtime.test_triton_codec import _stream_response_class
from tests.runtime.test_triton_pipeline import _serve
from tests.support.app import assemble
from tests.support.fake_engine import FakeEngine

METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
SWITCHES = tuple(triton.SWITCHES)

# As vLLM's adapter reports them: the prompt's tokens on every piece, this piece's tokens,
# the logprob sum so far; the last piece carries the finish reason and the usage.
FULL = [Delta(0, "Hé", None, 7, tokens=1, cumulative_logprob=-0.125),
        Delta(0, "", None, 7, tokens=2, cumulative_logprob=-1.2345678901),  # held back
        Delta(0, " 日本 ", None, 7, tokens=1, cumulative_logprob=-3.0000001),
        Delta(0, "end", "length", 7, 4, 1, -4.75)]
NO_USAGE = [Delta(0, "a", None, 3, tokens=1, cumulative_logprob=-0.5),
            Delta(0, "b", None, 3, tokens=1, cumulative_logprob=-1.0)]
FINISH_WITHOUT_COUNTS = [Delta(0, "a", None, 3, tokens=1, cumulative_logprob=-0.5),
                         Delta(0, "", "stop", 3, tokens=0, cumulative_logprob=-0.5)]

class ScriptedEngine(FakeEngine):
    """Streams a fixed list of deltas (token counts and logprobs as vLLM's adapter reports
    them); ``logprobs`` is accepted, as the real engine does."""

    def __init__(self, deltas: list[Delta]) -> None:
        super().__init__()
        self.deltas = deltas

    def prepare(self, prompts: list[str], params: dict[str, Any], **kw: Any) -> PreparedRequest:
        return super().prepare(prompts, {k: v for k, v in params.items() if k != "logprobs"},
                               **kw)

    async def stream(self, request: PreparedRequest) -> AsyncGenerator[Delta, None]:
        async def pieces() -> AsyncGenerator[Delta, None]:
            for delta in self.deltas:
                yield delta

        return pieces()


def grpc_request(prompt: str = "a b c", *, raw: bool = False, stream: bool = True,
                 switches: tuple[str, ...] = (), exclude: bool | None = None,
                 outputs: tuple[str, ...] = (), request_id: str = "req-1",
                 params: dict[str, int] | None = None,
                 input_name: str = "text_input") -> pb.ModelInferRequest:
    """A ModelInferRequest as tritonclient (``raw``: ``raw_input_contents``) or a plain
    protobuf client (typed ``contents``) sends it."""
    req = pb.ModelInferRequest(model_name="smollm2", id=request_id)
    tensors: list[tuple[str, str, Any]] = [(input_name, "BYTES", prompt.encode()),
                                           ("stream", "BOOL", stream)]
    tensors += [(name, "BOOL", True) for name in switches]
    if exclude is not None:
        tensors.append(("exclude_input_in_output", "BOOL", exclude))
    for name, datatype, value in tensors:
        tensor = req.inputs.add(name=name, datatype=datatype, shape=[1])
        if raw:
            req.raw_input_contents.append(
                struct.pack("<I", len(value)) + value if datatype == "BYTES"
                else bytes([int(value)]))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.append(value)
        else:
            tensor.contents.bool_contents.append(value)
    for name in outputs:
        req.outputs.add(name=name)
    for key, number in (params or {}).items():
        req.parameters[key].int64_param = number
    return req


async def _collect(messages: AsyncIterator[bytes]) -> list[bytes]:
    return [m async for m in messages]


def _old(model: LLMModel, payload: InferRequest) -> AsyncIterator[bytes]:
    """The path ModelStreamInfer took before ``stream_messages``: KServe's InferResponse,
    ``to_grpc()``, ``SerializeToString()``, wrapped by ``triton.stream_response``."""

    async def messages() -> AsyncIterator[bytes]:
        async for response in model.stream_predict(payload):
            yield triton.stream_response(response.to_grpc().SerializeToString())

    return messages()


def _answer(model: LLMModel, request: pb.ModelInferRequest, fast: bool
            ) -> tuple[list[bytes], str | None]:
    """Every message of one request, and the error that ended it (None: none)."""
    out: list[bytes] = []

    async def run() -> None:
        payload = InferRequest.from_grpc(request)
        messages = model.stream_messages(payload) if fast else _old(model, payload)
        async for message in messages:
            out.append(message)

    try:
        asyncio.run(run())
    except ServingError as err:
        return out, f"{type(err).__name__}: {err.message}"
    return out, None


def _parsed(message: bytes) -> tuple[str, pb.ModelInferResponse]:
    outer = _stream_response_class().FromString(message)
    return outer.error_message, pb.ModelInferResponse.FromString(outer.infer_response)


def _model(deltas: list[Delta] | None) -> LLMModel:
    engine = ScriptedEngine(deltas) if deltas is not None else FakeEngine()
    parts = assemble(engine=engine)
    return LLMModel("smollm2", parts.engine, parts.lifecycle, parts.pipeline)


CASES = {
    "typed contents, no options": (FULL, {}),
    "raw inputs, text_output requested (tritonclient, the benchmark)":
        (FULL, {"raw": True, "outputs": ("text_output",)}),
    "typed, every switch, prompt echoed": (FULL, {"switches": SWITCHES, "exclude": False}),
    "raw, every switch, prompt echoed": (FULL, {"raw": True, "switches": SWITCHES,
                                                "exclude": False}),
    "raw, finish reason and output tokens": (FULL, {"raw": True, "switches": (
        "return_finish_reason", "return_num_output_tokens")}),
    "typed, cumulative logprob": (FULL, {"switches": ("return_cumulative_logprob",)}),
    "requested outputs filter the switches": (FULL, {
        "raw": True, "switches": SWITCHES, "outputs": ("num_output_tokens", "text_output")}),
    "requested outputs without text_output": (FULL, {
        "switches": ("return_num_input_tokens",), "outputs": ("finish_reason",)}),
    "no request id": (FULL, {"request_id": "", "switches": ("return_finish_reason",)}),
    "engine ends without usage": (NO_USAGE, {"switches": ("return_finish_reason",)}),
    "engine ends without any output, prompt echoed": ([], {"exclude": False, "raw": True}),
    "finish reason without counts": (FINISH_WITHOUT_COUNTS, {"switches": SWITCHES}),
    "not streamed": (None, {"stream": False, "switches": ("return_finish_reason",)}),
    "not streamed, raw": (None, {"stream": False, "raw": True}),
    "fake engine, every piece": (None, {"prompt": "one two three four"}),
    # errors: before the first piece (bad input, refused parameter) and on the first piece
    "error: no text_input": (FULL, {"input_name": "prompt"}),
    "error: unknown parameter": (None, {"params": {"bogus": 1}}),
    "error: a requested count the engine does not report": (
        None, {"switches": ("return_num_output_tokens",)}),
    "error: no logprob reported": (None, {"raw": True, "switches": (
        "return_cumulative_logprob",)}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fast_messages_are_the_kserve_messages(name: str) -> None:
    deltas, kw = CASES[name]
    request = grpc_request(**kw)
    old, old_error = _answer(_model(deltas), request, fast=False)
    new, new_error = _answer(_model(deltas), request, fast=True)
    assert new_error == old_error
    assert (old_error is not None) == name.startswith("error"), old_error
    assert len(new) == len(old)
    for before, after in zip(old, new, strict=True):
        assert _parsed(after) == _parsed(before)
    if old:
        final = _parsed(new[-1])[1].parameters
        assert final["triton_final_response"].bool_param
        assert not any(_parsed(m)[1].parameters["triton_final_response"].bool_param
                       for m in new[:-1])


def test_the_benchmark_request_is_the_same_bytes() -> None:
    """The hot case (one requested output, raw contents, one parameter per piece) writes the
    very bytes KServe's serializer writes, not just an equal message."""
    request = grpc_request(raw=True, outputs=("text_output",))
    old, _ = _answer(_model(FULL), request, fast=False)
    new, _ = _answer(_model(FULL), request, fast=True)
    assert new[:-1] == old[:-1]


class OldModel(LLMModel):
    """The model as ModelStreamInfer served it before: every message through KServe."""

    def stream_messages(self, payload: InferRequest) -> AsyncIterator[bytes]:
        return _old(self, payload)


async def _over_grpc(model_class: type[LLMModel], requests: list[pb.ModelInferRequest]
                     ) -> list[tuple[str, pb.ModelInferResponse]]:
    server, port = await _serve(assemble(engine=ScriptedEngine(FULL)), model_class)
    out = []
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_stream(
                METHOD, request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=lambda b: b)()
            for request in requests:  # one at a time: the order is the answer's
                await call.write(request)
                while True:
                    error, inner = _parsed(await call.read())
                    out.append((error, inner))
                    final = inner.parameters.get("triton_final_response")
                    if error or (final is not None and final.bool_param):
                        break
            await call.done_writing()
    finally:
        await server.stop(None)
    return out


def test_the_stream_answers_the_same_over_grpc() -> None:
    """One stream, both ways: pieces with and without the optional outputs, an error before
    the first piece (in-band, correlated by id), an error on the first piece, the final one."""
    requests = [
        grpc_request(raw=True, outputs=("text_output",), request_id="bench"),
        grpc_request(switches=SWITCHES, exclude=False, request_id="all"),
        grpc_request(input_name="prompt", request_id="bad input"),
        grpc_request(params={"bogus": 1}, request_id="bad parameter"),
        grpc_request(stream=False, raw=True, request_id="whole"),
    ]
    old = asyncio.run(_over_grpc(OldModel, requests))
    new = asyncio.run(_over_grpc(LLMModel, requests))
    assert new == old
    errors = [(inner.id, error) for error, inner in new if error]
    assert [i for i, _ in errors] == ["bad input", "bad parameter"]
    assert len(new) == 2 * (len(FULL)) + 2 + 1
