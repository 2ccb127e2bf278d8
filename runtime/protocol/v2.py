"""Open Inference Protocol v2 (REST and gRPC) for text: ``text_input`` BYTES [B] -> ``text_output``.

Triton's vLLM backend tensors (``stream``, ``sampling_parameters``, ``exclude_input_in_output``,
``return_*``) are accepted next to ``parameters`` (``runtime.protocol.triton``); every answer
carries the finish reason and token counts in its response ``parameters``.

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

from runtime.engine.base import Completion, Delta
from runtime.errors import ClientError
from runtime.limits import check_text
from runtime.protocol import triton
from runtime.protocol.triton import Options

INPUT_NAME = "text_input"
OUTPUT_NAME = "text_output"
# Request parameters that steer the runtime or the transport rather than sampling.
CHAT_PARAMETER = "apply_chat_template"
TRANSPORT_PARAMETERS = {"binary_data_output", "binary_data", "binary_data_size", "headers",
                        # tritonclient's stream switch: the runtime always ends a stream
                        # with an empty response marked final.
                        "triton_enable_empty_final_response"}


def input_metadata() -> list[dict[str, Any]]:
    """Tensor metadata for ``/v2/models/{m}`` and gRPC ModelMetadata: every accepted input."""
    return [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}, *triton.input_metadata()]


def output_metadata() -> list[dict[str, Any]]:
    return [{"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [-1]}, *triton.output_metadata()]


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
    options: Options = field(default_factory=Options)


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
    extra = [n for n in names if n != INPUT_NAME and n not in triton.OPTION_INPUTS
             and n not in triton.UNSUPPORTED_SWITCHES]
    if extra:
        raise ClientError(f"unexpected input tensor(s) {extra}; accepted: "
                          f"{', '.join([INPUT_NAME, *triton.OPTION_INPUTS])}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ClientError(f"input tensor(s) given twice: {twice}")
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
    prompts = _texts(values)
    params = parameters_of(request.parameters)
    check_text(params, "parameters")
    options, params = triton.decode_options(
        [t for t in request.inputs if t.name != INPUT_NAME], params)
    text = text_request(prompts, params)
    text.options = options
    return text


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


def answer_parameters(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What every v2 answer says about how it ended: ``finish_reason`` (one per prompt, in
    order, comma-separated when B > 1) and the batch's ``prompt_tokens`` / ``completion_tokens``
    (OIP parameters are scalars; per-prompt counts are the ``num_*_tokens`` outputs)."""
    out: dict[str, Any] = {}
    reasons = [r.get("finish_reason") for r in rows]
    if all(r is not None for r in reasons):
        out["finish_reason"] = ",".join(str(r) for r in reasons)
    for key, row_key in (("prompt_tokens", "num_input_tokens"),
                         ("completion_tokens", "num_output_tokens")):
        counts: list[Any] = [r.get(row_key) for r in rows]
        if all(c is not None for c in counts):
            out[key] = int(sum(counts))
    return out


def _response(request: InferRequest, model_name: str, texts: list[str], options: Options,
              rows: list[dict[str, Any]], parameters: dict[str, Any]) -> InferResponse:
    outputs = [InferOutput(name=OUTPUT_NAME, shape=[len(texts)], datatype="BYTES", data=texts)]
    for name, datatype, data in triton.output_tensors(options.outputs, rows):
        outputs.append(InferOutput(name=name, shape=[len(data)], datatype=datatype, data=data))
    wanted = {o.name for o in request.request_outputs or ()}
    if wanted:
        outputs = [o for o in outputs if o.name in wanted]
    return InferResponse(
        response_id=request.id or "",
        model_name=model_name,
        infer_outputs=outputs,
        from_grpc=request.from_grpc,
        use_binary_outputs=request.use_binary_outputs,
        requested_outputs=request.request_outputs,
        parameters=parameters,
    )


def encode_response(request: InferRequest, model_name: str, completions: list[Completion],
                    text: TextRequest | None = None) -> InferResponse:
    """``text_output`` BYTES [B] in the order of the prompts (each after its prompt when
    ``exclude_input_in_output`` is false), the requested additional outputs, and the finish
    reason and token counts in the response parameters."""
    options = text.options if text is not None else Options()
    prompts = text.prompts if text is not None else [""] * len(completions)
    texts = [c.text if options.exclude_input else p + c.text
             for p, c in zip(prompts, completions, strict=True)]
    rows = [{"finish_reason": c.finish_reason, "cumulative_logprob": c.cumulative_logprob,
             "num_input_tokens": c.prompt_tokens, "num_output_tokens": c.completion_tokens}
            for c in completions]
    return _response(request, model_name, texts, options, rows, answer_parameters(rows))


def encode_delta(request: InferRequest, model_name: str, delta: Delta, text: TextRequest, *,
                 first: bool, final: bool) -> InferResponse:
    """One streamed response: the new text, this piece's additional outputs (as Triton's
    backend: ``num_output_tokens`` counts this piece's tokens, ``cumulative_logprob`` is the
    sum so far), ``triton_final_response``, and on the last one the finish reason and counts."""
    piece = delta.text
    if first and not text.options.exclude_input:
        piece = text.prompts[0] + piece
    row = {"finish_reason": delta.finish_reason, "cumulative_logprob": delta.cumulative_logprob,
           "num_input_tokens": delta.prompt_tokens, "num_output_tokens": delta.tokens}
    parameters: dict[str, Any] = {triton.FINAL_PARAMETER: final}
    if final:
        parameters |= answer_parameters([{"finish_reason": delta.finish_reason,
                                          "num_input_tokens": delta.prompt_tokens,
                                          "num_output_tokens": delta.completion_tokens}])
    else:
        row["finish_reason"] = None
    return _response(request, model_name, [piece], text.options, [row], parameters)
