"""REST index, load and unload of the model repository extension (Triton's paths), and vLLM's
LoRA operator routes answered by the same extension.

Why not KServe's routes: they ignore the request body, and a LoRA load needs its
``parameters.lora_path``. The paths and answers are KServe's (``{"name": m, "load": true}``);
the gate has already checked the key (the operator key for load and unload);
``runtime.repository`` decides the rest.

Why vLLM's ``/openai/v1/load_lora_adapter`` and ``/unload_lora_adapter`` are answered here and
not by vLLM's app (``--enable_operator_routes``): vLLM's handler loads any folder it is given,
pickled weights included, with no shape check and no bound, and the adapter it loads is not a
model the runtime serves. Here they take vLLM's request and answer shapes and are the
repository's load and unload: the same checks, and a served model on every protocol.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from runtime.errors import ClientError
from runtime.protocol.json_body import read_json
from runtime.repository import LORA_PATH, AdapterRepository


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


async def _vllm_request(request: Request, *fields: str) -> dict[str, Any]:
    """vLLM's Load/UnloadLoRAAdapterRequest body: a JSON object with non-empty string
    ``fields``."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ClientError("request body must be a JSON object")
    for name in fields:
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise ClientError(f"'{name}' must be a non-empty string")
    return body


def build_vllm_lora_router(repository: AdapterRepository) -> APIRouter:
    """``POST /openai/v1/load_lora_adapter`` and ``/unload_lora_adapter`` (vLLM's operator
    routes, served with ``--enable_operator_routes``) as the repository's load and unload."""
    router = APIRouter()

    @router.post("/openai/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> PlainTextResponse:
        body = await _vllm_request(request, "lora_name", LORA_PATH)
        for flag in ("load_inplace", "is_3d_lora_weight"):
            if body.get(flag):
                raise ClientError(f"'{flag}' is not supported by this server: unload the "
                                  "adapter first (/openai/v1/unload_lora_adapter), then load")
        name = body["lora_name"]
        await repository.load(name, {LORA_PATH: body[LORA_PATH]})
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @router.post("/openai/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> PlainTextResponse:
        name = (await _vllm_request(request, "lora_name"))["lora_name"]
        await repository.unload(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    return router
