"""REST index, load and unload of the model repository extension (Triton's paths).

Why not KServe's routes: they ignore the request body, and a LoRA load needs its
``parameters.lora_path``. The paths and answers are KServe's (``{"name": m, "load": true}``);
the gate has already checked the key; ``runtime.repository`` decides the rest.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from runtime.errors import ClientError
from runtime.protocol.json_body import read_json
from runtime.repository import AdapterRepository


async def _parameters(request: Request) -> Any:
    if not await request.body():
        return None
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ClientError("request body must be a JSON object")
    return body.get("parameters")


def build_router(repository: AdapterRepository) -> APIRouter:
    """``POST /v2/repository/models/{m}/load`` and ``/unload``."""
    router = APIRouter()

    @router.api_route("/v2/repository/index", methods=["GET", "POST"])
    async def index(request: Request) -> list[dict[str, str]]:
        """Triton's index: every served model (base, aliases, adapters) and its state;
        ``{"ready": true}`` lists only the ready ones."""
        ready = False
        if request.method == "POST" and await request.body():
            body = await read_json(request)
            if not isinstance(body, dict) or not isinstance(body.get("ready", False), bool):
                raise ClientError('the index body is {"ready": <boolean>}')
            ready = body.get("ready", False)
        return await repository.index(ready)

    @router.post("/v2/repository/models/{model_name}/load")
    async def load(model_name: str, request: Request) -> dict[str, Any]:
        await repository.load(model_name, await _parameters(request))
        return {"name": model_name, "load": True}

    @router.post("/v2/repository/models/{model_name}/unload")
    async def unload(model_name: str) -> dict[str, Any]:
        await repository.unload(model_name)
        return {"name": model_name, "unload": True}

    return router
