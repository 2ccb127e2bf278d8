"""v2 gRPC: ModelInfer (timed like the other non-streamed APIs) and ModelStreamInfer (timed
like the other streams: one chunk per response that carries text).

Why a module of its own: ``tritonclient.grpc`` registers the ``inference`` protobuf package,
which clashes with kserve's in one process (docs/platform-notes.md); it is imported only
when ``v2-grpc`` or ``v2-grpc-stream`` is benchmarked, and this package never imports kserve.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.clients import Sampling, Target
from benchmarks.records import RequestRecord
from benchmarks.workload import Prompt


def grpc_client(target: Target) -> Any:
    """An asyncio tritonclient for the target's gRPC address."""
    import tritonclient.grpc.aio as grpcclient

    if not target.grpc_url:
        raise ValueError(f"target {target.name} has no gRPC address (--grpc NAME=HOST:PORT)")
    return grpcclient.InferenceServerClient(url=target.grpc_url)


async def v2_grpc(client: Any, target: Target, prompt: Prompt, sampling: Sampling,
                  record: RequestRecord) -> None:
    """ModelInfer with a ``text_input`` BYTES [1] tensor and sampling in ``parameters``; the
    output token count from the response's ``completion_tokens`` parameter when the server
    puts one there (the runtime does), else the client tokenizes the text afterwards."""
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("text_input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([prompt.text.encode()], dtype=np.object_))
    wanted = [grpcclient.InferRequestedOutput("text_output")]
    record.begin()
    result = await client.infer(target.model, [tensor], outputs=wanted,
                                parameters=sampling.params(prompt.output_len),
                                headers=target.grpc_metadata())
    record.end = time.perf_counter()
    record.status = 200  # the RPC succeeded (an error raises)
    out = result.as_numpy("text_output")
    text = out.reshape(-1)[0] if out is not None and out.size else b""
    record.answered(text.decode() if isinstance(text, bytes) else str(text))
    _counts(record, result.get_response())


def _param(response: Any, name: str) -> Any:
    """A response parameter's value (bool, int64 or string), None when absent."""
    params = response.parameters
    if name not in params:
        return None
    value = params[name]
    field = value.WhichOneof("parameter_choice")
    return getattr(value, field) if field else None


def _counts(record: RequestRecord, response: Any) -> None:
    """The server's token counts from a response's ``completion_tokens`` / ``prompt_tokens``
    parameters (on the last response of a stream), when it gives them."""
    count = _param(response, "completion_tokens")
    if isinstance(count, int) and count > 0:
        record.output_tokens, record.token_source = count, "usage"
    prompt_tokens = _param(response, "prompt_tokens")
    if isinstance(prompt_tokens, int):
        record.prompt_tokens = prompt_tokens


async def v2_grpc_stream(client: Any, target: Target, prompt: Prompt, sampling: Sampling,
                         record: RequestRecord) -> None:
    """ModelStreamInfer as Triton's vLLM backend is driven: ``text_input``, ``stream`` true and
    ``sampling_parameters`` (JSON) tensors on one decoupled stream; one chunk per response with
    text, until the response marked ``triton_final_response``."""
    import json

    import tritonclient.grpc as grpcclient

    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.text.encode()], dtype=np.object_))
    stream = grpcclient.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([True]))
    params = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
    params.set_data_from_numpy(np.array(
        [json.dumps(sampling.params(prompt.output_len)).encode()], dtype=np.object_))

    async def requests() -> Any:
        yield {"model_name": target.model, "inputs": [text, stream, params],
               "outputs": [grpcclient.InferRequestedOutput("text_output")]}

    record.begin()
    async for result, error in client.stream_infer(requests(), headers=target.grpc_metadata()):
        now = time.perf_counter()
        if error is not None:
            record.error = f"stream error: {str(error)[:300]}"
            break
        response = result.get_response()
        out = result.as_numpy("text_output")
        if out is not None and out.size:
            piece = out.reshape(-1)[0]
            record.text += piece.decode() if isinstance(piece, bytes) else str(piece)
            record.chunk_times.append(now)
        _counts(record, response)
        if _param(response, "triton_final_response"):
            break
    record.status = 200 if not record.error else 500
    record.end = record.chunk_times[-1] if record.chunk_times else time.perf_counter()
    if not record.error and not record.chunk_times:
        record.error = "stream ended without any output"
    record.success = not record.error
