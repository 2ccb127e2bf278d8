"""The Triton vLLM backend's tensor interface, next to the runtime's own ``parameters``.

Why: teams moving from Triton keep their client code. Triton's vLLM backend takes its request
as tensors (``text_input``, ``stream``, ``sampling_parameters`` as a JSON string with vLLM's
``SamplingParams`` names, ``exclude_input_in_output``, and ``return_*`` switches) and answers
the switches with output tensors of fixed names, datatypes and shapes (the backend's
src/model.py and docs/additional_outputs.md). This module turns those tensors into the
runtime's ``Options`` plus sampling parameters, rejecting a setting given both ways with
different values, and writes the output tensors; it also writes Triton's
``ModelStreamInferResponse`` by hand, since KServe's proto has no such message and
tritonclient's protobuf module cannot be loaded next to KServe's (both define ``inference``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import ClientError
from runtime.limits import load_json

# Input tensors other than text_input, with their datatype (the backend's config, dims [1]).
SAMPLING_INPUT = "sampling_parameters"
STREAM_INPUT = "stream"
EXCLUDE_INPUT = "exclude_input_in_output"
SWITCHES: dict[str, str] = {  # input switch -> output tensor it turns on
    "return_finish_reason": "finish_reason",
    "return_cumulative_logprob": "cumulative_logprob",
    "return_num_input_tokens": "num_input_tokens",
    "return_num_output_tokens": "num_output_tokens",
}
UNSUPPORTED_SWITCHES = frozenset({"return_logprobs"})
OPTION_INPUTS: dict[str, str] = {
    STREAM_INPUT: "BOOL", SAMPLING_INPUT: "BYTES", EXCLUDE_INPUT: "BOOL",
    **{name: "BOOL" for name in SWITCHES},
}
OUTPUTS: dict[str, str] = {
    "finish_reason": "BYTES", "cumulative_logprob": "FP32",
    "num_input_tokens": "UINT32", "num_output_tokens": "UINT32",
}
# The option tensors are also accepted as request parameters of the same name.
PARAMETERS: dict[str, str] = {
    STREAM_INPUT: "bool, default false: on ModelStreamInfer, one response per engine output "
                  "then a final one (also an input tensor, BOOL [1])",
    EXCLUDE_INPUT: "bool, default true: false puts the prompt before the answer (also an "
                   "input tensor, BOOL [1])",
    **{name: f"bool, default false: adds the output tensor '{out}' (also an input tensor, "
             "BOOL [1])" for name, out in SWITCHES.items()},
}
# Triton's decoupled convention: every streamed response says whether it is the last one.
FINAL_PARAMETER = "triton_final_response"


@dataclass(frozen=True)
class Options:
    """How to run and answer one v2 request, beyond its sampling parameters."""

    stream: bool = False
    exclude_input: bool = True  # the runtime's default: the answer alone
    outputs: frozenset[str] = frozenset()  # additional output tensors (OUTPUTS keys)


def input_metadata() -> list[dict[str, Any]]:
    return [{"name": name, "datatype": datatype, "shape": [1]}
            for name, datatype in OPTION_INPUTS.items()]


def output_metadata() -> list[dict[str, Any]]:
    return [{"name": name, "datatype": datatype, "shape": [-1]}
            for name, datatype in OUTPUTS.items()]


def _values(tensor: Any) -> list[Any]:
    if getattr(tensor, "_raw_data", None) is not None:
        return list(np.asarray(tensor.as_numpy()).reshape(-1))
    data = tensor.data
    if data is None:
        raise ClientError(f"input '{tensor.name}' has no data")
    flat = list(np.asarray(data, dtype=object).reshape(-1)) if not isinstance(data, list) else data
    while flat and isinstance(flat[0], list):
        flat = [v for row in flat for v in row]
    return flat


def _scalar(tensor: Any) -> Any:
    """The single element of an option tensor, checked against the backend's datatype."""
    expected = OPTION_INPUTS[tensor.name]
    if tensor.datatype != expected:
        raise ClientError(
            f"input '{tensor.name}' must have datatype {expected}, got {tensor.datatype}")
    values = _values(tensor)
    if len(values) != 1 or math.prod(list(tensor.shape) or [0]) != 1:
        raise ClientError(f"input '{tensor.name}' must hold exactly one element (shape [1]), "
                          f"got shape {list(tensor.shape)}")
    value = values[0]
    if expected == "BOOL":
        if isinstance(value, bool | np.bool_):
            return bool(value)
        raise ClientError(f"input '{tensor.name}' must hold a boolean, got {value!r:.40}")
    if isinstance(value, bytes | bytearray | np.bytes_):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ClientError(f"input '{tensor.name}' holds bytes that are not UTF-8") from None
    return str(value)


def _same(a: Any, b: Any) -> bool:
    """Whether two spellings of one setting agree (Triton clients send numbers as strings)."""
    if a == b:
        return True
    sa, sb = (str(v).strip().lower() for v in (a, b))
    if sa == sb:
        return True
    try:
        return float(sa) == float(sb)
    except ValueError:
        return False


def _conflict(name: str, tensor_value: Any, param_value: Any) -> ClientError:
    return ClientError(
        f"'{name}' is given twice with different values: {tensor_value!r:.60} (input tensor) "
        f"and {param_value!r:.60} (request parameter); give it once")


def _sampling_json(text: str) -> dict[str, Any]:
    value = load_json(text, f"input '{SAMPLING_INPUT}'") if text.strip() else {}
    if not isinstance(value, dict):
        raise ClientError(f"input '{SAMPLING_INPUT}' must be a JSON object of vLLM "
                          f"SamplingParams names, got {type(value).__name__}")
    return value


def decode_options(tensors: Sequence[Any], params: dict[str, Any]
                   ) -> tuple[Options, dict[str, Any]]:
    """The options and the merged sampling parameters of a request's option tensors and
    ``parameters``. Each option may also be a request parameter of the same name (as Triton's
    generate extension allows); ``sampling_parameters`` keys merge with ``parameters``. The
    same setting given both ways must agree, else 400."""
    given: dict[str, Any] = {}
    for tensor in tensors:
        if tensor.name in UNSUPPORTED_SWITCHES:
            raise ClientError(f"input '{tensor.name}' is not supported by this runtime; "
                              f"supported switches: {', '.join(SWITCHES)}")
        given[tensor.name] = _scalar(tensor)
    rest = dict(params)
    settings: dict[str, bool] = {}
    for name in (STREAM_INPUT, EXCLUDE_INPUT, *SWITCHES):
        in_params = name in rest
        value = rest.pop(name, None)
        if in_params and not isinstance(value, bool):
            raise ClientError(f"parameter '{name}' must be a boolean, got {value!r:.40}")
        if name in given:
            if in_params and value != given[name]:
                raise _conflict(name, given[name], value)
            value = given[name]
        if value is not None:
            settings[name] = bool(value)
    if SAMPLING_INPUT in rest:
        raise ClientError(f"'{SAMPLING_INPUT}' is an input tensor (BYTES, a JSON object); "
                          "as request parameters, give its keys directly")
    for key, value in _sampling_json(given.get(SAMPLING_INPUT, "")).items():
        if key in rest and not _same(value, rest[key]):
            raise _conflict(key, value, rest[key])
        rest[key] = value
    outputs = frozenset(out for name, out in SWITCHES.items() if settings.get(name))
    if "cumulative_logprob" in outputs:
        rest.setdefault("logprobs", 0)  # vLLM computes logprobs only when asked
    return Options(stream=settings.get(STREAM_INPUT, False),
                   exclude_input=settings.get(EXCLUDE_INPUT, True), outputs=outputs), rest


# ---- output tensors ----

def output_tensors(outputs: frozenset[str], rows: Sequence[dict[str, Any]]
                   ) -> list[tuple[str, str, list[Any]]]:
    """(name, datatype, data) of each requested additional output, one element per row.

    Each row holds ``finish_reason``, ``cumulative_logprob``, ``num_input_tokens`` and
    ``num_output_tokens`` for one prompt (or one streamed piece); a requested value the
    engine did not report is an error, never a silent 0."""
    tensors = []
    for name, datatype in OUTPUTS.items():
        if name not in outputs:
            continue
        data: list[Any] = [row.get(name) for row in rows]
        if name == "finish_reason":
            data = [str(v) for v in data]  # Triton's str(None) for an unfinished piece
        elif any(v is None for v in data):
            raise ClientError(f"output '{name}' is not available for this request")
        elif datatype == "FP32":
            data = [float(v) for v in data]
        else:
            data = [int(v) for v in data]
        tensors.append((name, datatype, data))
    return tensors


# ---- ModelStreamInferResponse {string error_message = 1; ModelInferResponse infer_response = 2}

SMALL_VARINTS = [bytes((n,)) for n in range(128)]  # the one-byte varints, prebuilt


def varint(value: int) -> bytes:
    """A protobuf varint (an ``int64`` below zero as its ten-byte two's complement)."""
    if 0 <= value < 128:
        return SMALL_VARINTS[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: tag (number << 3 | 2), varint length, bytes."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def stream_response(infer_response: bytes | None = None, error_message: str = "") -> bytes:
    """Triton's ``ModelStreamInferResponse`` on the wire, from a serialized
    ``ModelInferResponse`` (KServe's message has the same wire format)."""
    out = b""
    if error_message:
        out += field(1, error_message.encode("utf-8"))
    if infer_response is not None:
        out += field(2, infer_response)
    return out


# ---- RepositoryModelLoadRequest.parameters (Triton's field 3; KServe's proto lacks it) ----

_MAX_REPOSITORY_PARAMETERS = 16


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ClientError("malformed repository parameters")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, varint or bytes) of a message's varint and length-delimited fields."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            out.append((number, value))
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise ClientError("malformed repository parameters")
            out.append((number, buf[pos:pos + size]))
            pos += size
        else:
            raise ClientError("malformed repository parameters")
    return out


def repository_request(request: Any) -> tuple[str, dict[str, Any]]:
    """The model name and ``parameters`` map (key -> bool, int, string or bytes) of a gRPC
    RepositoryModelLoad/UnloadRequest.

    KServe's proto has ``model_name = 1``; Triton's (which tritonclient sends) has
    ``repository_name = 1, model_name = 2, parameters = 3``: fields 2 and 3 arrive as unknown
    fields of KServe's generated class, and when field 2 is there, field 1 is the repository.
    """
    from google.protobuf import unknown_fields

    name = request.model_name
    params: dict[str, Any] = {}
    for unknown in unknown_fields.UnknownFieldSet(request):
        if unknown.field_number == 2 and isinstance(unknown.data, bytes):
            name = unknown.data.decode("utf-8", "replace")
        if unknown.field_number != 3 or not isinstance(unknown.data, bytes):
            continue
        if len(params) >= _MAX_REPOSITORY_PARAMETERS:
            raise ClientError(f"more than {_MAX_REPOSITORY_PARAMETERS} repository parameters")
        key = ""
        value: Any = None
        for number, data in _fields(unknown.data):
            if number == 1 and isinstance(data, bytes):
                key = data.decode("utf-8", "replace")
            elif number == 2 and isinstance(data, bytes):
                for kind, item in _fields(data):
                    if kind == 3 and isinstance(item, bytes):
                        value = item.decode("utf-8", "replace")
                    elif kind == 4:
                        value = item
                    elif kind == 1:
                        value = bool(item)
                    elif kind == 2:
                        value = item
        params[key] = value
    return name, params
