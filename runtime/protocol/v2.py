"""Open Inference Protocol v2 (REST and gRPC) for text: ``text_input`` BYTES [B] -> ``text_output``.

Why one codec for both transports: KServe's DataPlane already turns REST JSON and gRPC
protobuf into one ``InferRequest``; this module turns that into ``TextRequest`` (prompts,
sampling parameters, chat switch), which the engine adapter validates into typed requests, and
the answers back into an ``InferResponse``, so both transports share every check and message.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from runtime.engine.base import Completion
from runtime.errors import ClientError
from runtime.limits import check_text

INPUT_NAME = "text_input"
OUTPUT_NAME = "text_output"
# Request parameters that steer the runtime or the transport rather than sampling.
CHAT_PARAMETER = "apply_chat_template"
TRANSPORT_PARAMETERS = {"binary_data_output", "binary_data", "binary_data_size", "headers"}


def input_metadata() -> list[dict[str, Any]]:
    """Tensor metadata for ``/v2/models/{m}`` and gRPC ModelMetadata."""
    return [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]


def output_metadata() -> list[dict[str, Any]]:
    return [{"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [-1]}]


# Triton's InferParameter has double_param = 4 and uint64_param = 5; KServe's proto (and the
# KServe OIP spec) stops at string_param = 3, so those arrive as unknown fields. tritonclient
# sends every Python float as double_param: decoding them here keeps `temperature=0.0` from
# being silently dropped on gRPC.
_DOUBLE_PARAM, _UINT64_PARAM = 4, 5


def _param_value(value: Any) -> Any:
    """A parameter as a Python value; gRPC ``InferParameter`` messages included."""
    which = getattr(value, "WhichOneof", None)
    if which is None:
        return value
    field = value.WhichOneof("parameter_choice")
    if field is not None:
        return getattr(value, field)
    from google.protobuf import unknown_fields

    for unknown in unknown_fields.UnknownFieldSet(value):
        if unknown.field_number == _DOUBLE_PARAM:
            return struct.unpack("<d", struct.pack("<Q", unknown.data))[0]
        if unknown.field_number == _UINT64_PARAM:
            return int(unknown.data)
    raise ClientError("a gRPC parameter has no value")


def parameters_of(raw: Any) -> dict[str, Any]:
    """Request-level parameters as a plain dict (REST dict or gRPC map)."""
    if not raw:
        return {}
    return {str(k): _param_value(v) for k, v in dict(raw).items()}


def _texts(values: Any) -> list[str]:
    out = []
    for v in values:
        if isinstance(v, bytes | bytearray | np.bytes_):
            try:
                v = bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                raise ClientError(f"input '{INPUT_NAME}' holds bytes that are not UTF-8") from None
        elif isinstance(v, np.str_):
            v = str(v)
        if not isinstance(v, str):
            raise ClientError(
                f"input '{INPUT_NAME}' must hold strings, got {type(v).__name__} {v!r:.40}")
        out.append(v)
    return out


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, np.ndarray):
        return list(data.reshape(-1))
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list | tuple):
            flat.extend(_flatten(item))
        else:
            flat.append(item)
    return flat


@dataclass
class TextRequest:
    """What every text protocol (v2, generate, KServe v1) decodes to before validation."""

    prompts: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    chat: bool = False


def text_request(prompts: list[str], params: dict[str, Any]) -> TextRequest:
    """Split the runtime's and the transport's own keys from the sampling settings."""
    check_text(prompts, f"input '{INPUT_NAME}'")
    check_text(params, "parameters")
    return TextRequest(prompts, sampling_parameters(params), chat_flag(params))


def decode_request(request: InferRequest) -> TextRequest:
    """Check an ``InferRequest`` against the text contract and turn it into a TextRequest."""
    names = [i.name for i in request.inputs]
    if INPUT_NAME not in names:
        raise ClientError(
            f"missing input tensor '{INPUT_NAME}' (BYTES, shape [B]); got {names or 'no inputs'}")
    extra = [n for n in names if n != INPUT_NAME]
    if extra:
        raise ClientError(f"unexpected input tensor(s) {extra}; only '{INPUT_NAME}' is accepted")
    tensor = request.inputs[names.index(INPUT_NAME)]
    if tensor.datatype != "BYTES":
        raise ClientError(f"input '{INPUT_NAME}' must have datatype BYTES, got {tensor.datatype}")
    shape = list(tensor.shape)
    if not shape or len(shape) > 2 or (len(shape) == 2 and shape[1] != 1) or any(
            d < 0 for d in shape):
        raise ClientError(f"input '{INPUT_NAME}' must have shape [B] or [B, 1], got {shape}")
    if getattr(tensor, "_raw_data", None) is not None:
        data = tensor.as_numpy()
    else:
        data = tensor.data
        if data is None:
            raise ClientError(f"input '{INPUT_NAME}' has no data")
    values = _flatten(data)
    expected = math.prod(shape)
    if len(values) != expected:
        raise ClientError(
            f"input '{INPUT_NAME}' has shape {shape} ({expected} elements) but holds "
            f"{len(values)} elements")
    if not values:
        raise ClientError(f"empty batch: input '{INPUT_NAME}' must hold at least one prompt")
    return text_request(_texts(values), parameters_of(request.parameters))


def chat_flag(params: dict[str, Any]) -> bool:
    """The documented switch that applies the model's chat template on v2."""
    value = params.get(CHAT_PARAMETER, False)
    if not isinstance(value, bool):
        raise ClientError(f"parameter '{CHAT_PARAMETER}' must be a boolean, got {value!r}")
    return value


def sampling_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """Drop the runtime's and the transport's own keys; the rest are sampling settings."""
    return {k: v for k, v in params.items()
            if k != CHAT_PARAMETER and k not in TRANSPORT_PARAMETERS}


def encode_response(request: InferRequest, model_name: str,
                    completions: list[Completion]) -> InferResponse:
    """``text_output`` BYTES [B], in the order of the prompts."""
    texts = [c.text for c in completions]
    output = InferOutput(name=OUTPUT_NAME, shape=[len(texts)], datatype="BYTES", data=texts)
    return InferResponse(
        response_id=request.id or "",
        model_name=model_name,
        infer_outputs=[output],
        from_grpc=request.from_grpc,
        use_binary_outputs=request.use_binary_outputs,
        requested_outputs=request.request_outputs,
    )
