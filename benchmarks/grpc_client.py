"""v2 gRPC ModelInfer, timed like the other non-streamed APIs.

Why a module of its own: ``tritonclient.grpc`` registers the ``inference`` protobuf package,
which clashes with kserve's in one process (docs/platform-notes.md); it is imported only
when ``v2-grpc`` is benchmarked, and this package never imports kserve.
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
    """ModelInfer with a ``text_input`` BYTES [1] tensor and sampling in ``parameters``."""
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("text_input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([prompt.text.encode()], dtype=np.object_))
    wanted = [grpcclient.InferRequestedOutput("text_output")]
    record.begin()
    result = await client.infer(target.model, [tensor], outputs=wanted,
                                parameters=sampling.params(prompt.output_len))
    record.end = time.perf_counter()
    record.status = 200  # the RPC succeeded (an error raises)
    out = result.as_numpy("text_output")
    text = out.reshape(-1)[0] if out is not None and out.size else b""
    record.answered(text.decode() if isinstance(text, bytes) else str(text))
