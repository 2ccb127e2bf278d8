"""ModelStreamInfer's streamed responses written straight to protobuf bytes.

Why: a stream answers one message per engine output, and building each one as KServe's
``InferResponse`` (``v2.encode_delta``), then ``to_grpc()`` and ``SerializeToString()``, cost
more CPU per token than the rest of the runtime's part of the stream. ``StreamEncoder`` writes
the same ``ModelInferResponse`` (wrapped in Triton's ``ModelStreamInferResponse``) from each
``Delta``: what stays the same for the whole request (id, model name, which output tensors,
raw or typed contents) is worked out once, each piece only adds its text, its parameters and
the requested Triton outputs. It writes exactly what ``v2.encode_delta`` + ``to_grpc()`` do
(tests/runtime/test_triton_fast_stream.py compares them), including KServe's rule that a gRPC
request sent with ``raw_input_contents`` gets its outputs in ``raw_output_contents``.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from kserve.protocol.infer_type import InferRequest

from runtime.engine.base import Delta
from runtime.errors import ClientError
from runtime.protocol import triton

# ModelInferResponse: model_name = 1, id = 3, parameters = 4 (map), outputs = 5,
# raw_output_contents = 6. InferOutputTensor: name = 1, datatype = 2, shape = 3 (packed),
# parameters = 4, contents = 5. InferTensorContents: uint_contents = 4 (packed),
# fp32_contents = 6 (packed), bytes_contents = 8. InferParameter: bool_param = 1,
# int64_param = 2, string_param = 3. Map entries: key = 1, value = 2.
_SMALL = triton.SMALL_VARINTS
_varint = triton.varint
_field = triton.field


def _parameter(key: str, value: bool | int | str) -> bytes:
    """One entry of a ``map<string, InferParameter>`` (as KServe's ``to_grpc_parameters``)."""
    if isinstance(value, bool):
        inner = b"\x08" + _SMALL[int(value)]
    elif isinstance(value, int):
        inner = b"\x10" + _varint(value)
    else:
        inner = _field(3, value.encode("utf-8"))
    return _field(1, key.encode("utf-8")) + _field(2, inner)


_NOT_FINAL = _field(4, _parameter(triton.FINAL_PARAMETER, False))
_FINAL = _field(4, _parameter(triton.FINAL_PARAMETER, True))


class StreamEncoder:
    """The wire bytes of one streamed request's responses; see the module docstring."""

    def __init__(self, request: InferRequest, model_name: str, options: triton.Options,
                 prompt: str) -> None:
        self.options = options
        self.prompt = prompt
        self.raw = bool(request.use_binary_outputs)
        self.header = _field(1, model_name.encode("utf-8")) + (
            _field(3, request.id.encode("utf-8")) if request.id else b"")
        names = [n for n in _OUTPUT_ORDER if n == _TEXT or n in options.outputs]
        wanted = {o.name for o in request.request_outputs or ()}
        if wanted:
            names = [n for n in names if n in wanted]
        self.names = names
        self.extras = [n for n in triton.OUTPUTS if n in options.outputs]  # checked in order
        # name, datatype and shape [1] of each output: the same on every piece
        self.heads = {n: _field(1, n.encode()) + _field(2, _DATATYPES[n].encode())
                      + b"\x1a\x01\x01" for n in names}

    def piece(self, delta: Delta, first: bool, final: bool) -> bytes:
        """One ``ModelStreamInferResponse`` on the wire, as ``triton.stream_response(
        v2.encode_delta(...).to_grpc().SerializeToString())``."""
        text = delta.text
        if first and not self.options.exclude_input:
            text = self.prompt + text
        values: dict[str, Any] = {_TEXT: text}
        if self.extras:
            values |= self._extras(delta, final)
        if final:
            out = self.header + _FINAL
            if delta.finish_reason is not None:
                out += _field(4, _parameter("finish_reason", str(delta.finish_reason)))
            if delta.prompt_tokens is not None:
                out += _field(4, _parameter("prompt_tokens", int(delta.prompt_tokens)))
            if delta.completion_tokens is not None:
                out += _field(4, _parameter("completion_tokens", int(delta.completion_tokens)))
        else:
            out = self.header + _NOT_FINAL
        raws = []
        for name in self.names:
            value = values[name]
            if self.raw:
                raw = _raw(name, value)
                raws.append(_field(6, raw))
                tensor = self.heads[name] + _field(4, _parameter("binary_data_size", len(raw)))
            else:
                tensor = self.heads[name] + _field(5, _contents(name, value))
            out += _field(5, tensor)
        if raws:
            out += b"".join(raws)
        return b"\x12" + _varint(len(out)) + out

    def _extras(self, delta: Delta, final: bool) -> dict[str, Any]:
        """The requested Triton outputs of this piece, checked as ``triton.output_tensors``
        checks them (a requested count the engine did not report is an error)."""
        row = {"finish_reason": delta.finish_reason if final else None,
               "cumulative_logprob": delta.cumulative_logprob,
               "num_input_tokens": delta.prompt_tokens, "num_output_tokens": delta.tokens}
        out: dict[str, Any] = {}
        for name in self.extras:
            value = row[name]
            if name == "finish_reason":
                out[name] = str(value)
            elif value is None:
                raise ClientError(f"output '{name}' is not available for this request")
            elif _DATATYPES[name] == "FP32":
                out[name] = float(value)
            else:
                out[name] = int(value)
        return out


_TEXT = "text_output"
_DATATYPES = {_TEXT: "BYTES", **triton.OUTPUTS}
_OUTPUT_ORDER = list(_DATATYPES)


def _raw(name: str, value: Any) -> bytes:
    """An output's ``raw_output_contents`` entry, as KServe's ``set_data_from_numpy``."""
    datatype = _DATATYPES[name]
    if datatype == "BYTES":
        data = value.encode("utf-8")
        return struct.pack("<I", len(data)) + data
    if datatype == "FP32":
        return np.float32(value).tobytes()
    return struct.pack("<I", value)


def _contents(name: str, value: Any) -> bytes:
    """An output's typed ``InferTensorContents``."""
    datatype = _DATATYPES[name]
    if datatype == "BYTES":
        return _field(8, value.encode("utf-8"))
    if datatype == "FP32":
        return _field(6, np.float32(value).tobytes())
    return _field(4, _varint(value))
