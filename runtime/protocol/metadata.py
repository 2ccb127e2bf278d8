"""v2 model metadata that describes the text tensors and the accepted parameters.

Why not KServe's: its ``ModelMetadataResponse`` has no room for parameters, and a v2 client
needs to know that sampling settings travel in the request's ``parameters`` (or, Triton's way,
in the ``sampling_parameters`` tensor) and which switches the option tensors accept.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from runtime.engine.base import Engine
from runtime.pipeline import Pipeline
from runtime.protocol import triton, v2


def build_router(engine: Engine, pipeline: Pipeline) -> APIRouter:
    """``GET /v2/models/{m}`` for the base model, its aliases and its LoRA adapters."""
    router = APIRouter()

    @router.get("/v2/models/{model_name}")
    async def model_metadata(model_name: str) -> dict[str, Any]:
        pipeline.resolve(model_name)
        params = {**engine.parameters,
                  v2.CHAT_PARAMETER: "bool, default false: send each text_input as one user "
                                     "message through the model's chat template",
                  **triton.PARAMETERS}
        return {
            "name": model_name,
            "versions": [],
            "platform": "vllm",
            "inputs": v2.input_metadata(),
            "outputs": v2.output_metadata(),
            "parameters": params,
        }

    return router
