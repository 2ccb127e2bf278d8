"""OpenAI API routes (``/openai/v1/...``, and unprefixed as vLLM serves them), and the other APIs
vLLM's server answers: Responses, Anthropic's Messages, score, rerank, pooling, classify,
audio, SageMaker's ``/invocations`` (the route table, ``runtime.routes``, lists them).

Why the runtime's own routes: each body is read once, validated once into vLLM's request
object by the engine adapter, bounded by the limits on its validated values, admitted, and
answered by vLLM's own serving code (chat templates, logprobs, ``n``, stop strings, streaming,
error shapes: what OpenAI clients of vLLM rely on). The gate has already checked the key, the
lifecycle and the route; errors raised here are rendered in OpenAI's error shape.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from runtime import routes
from runtime.engine.base import Engine
from runtime.errors import from_status
from runtime.pipeline import Call, Pipeline
from runtime.protocol.json_body import read_form, read_json


async def _watched(events: AsyncIterable[Any], call: Call) -> AsyncIterator[Any]:
    """vLLM's server-sent events, passed through; an error event (vLLM reports a failure
    after the 200 in-band, ``data: {"error": {..., "code": N}}``) sets the request's outcome,
    so that it is not counted as a success."""
    async for event in events:
        text = event if isinstance(event, str) else bytes(event).decode("utf-8", "replace")
        if text.startswith(("event: error", "event: response.failed")):  # Anthropic, Responses
            call.fail(from_status(500, "error event"))
        elif text.startswith('data: {"error"'):
            try:
                code = int(json.loads(text[6:])["error"].get("code") or 500)
            except (ValueError, KeyError, TypeError, AttributeError):
                code = 500
            call.fail(from_status(code, "error event"))
        yield event


def build_router(engine: Engine, pipeline: Pipeline) -> APIRouter:
    """The served OpenAI endpoints, bound to one engine and the pipeline."""
    router = APIRouter()

    async def serve(kind: str, request: Request) -> Response:
        body = await (read_form(request) if kind in routes.FORM_KINDS else read_json(request))
        typed = engine.openai_parse(kind, body)
        requested = engine.openai_model(typed)
        call = getattr(request.state, "call", None)
        if call is not None:  # labelled before resolving: an unknown name counts as _other
            call.name(requested)
        pipeline.resolve(requested)  # ModelNotFoundError for a name not served
        pipeline.admit(engine.openai_work(kind, typed, pipeline.limits))
        response = await engine.openai_respond(kind, typed, request)
        if call is not None and isinstance(response, StreamingResponse):
            response.body_iterator = _watched(response.body_iterator, call)
        return response

    def add(path: str, kind: str) -> None:
        async def endpoint(request: Request) -> Response:
            return await serve(kind, request)

        endpoint.__name__ = f"openai_{kind}_{'prefixed' if path.startswith('/openai') else 'v1'}"
        router.add_api_route(path, endpoint, methods=["POST"], include_in_schema=True)

    for sub, kind in routes.OPENAI_ENDPOINTS.items():
        add("/openai" + sub, kind)
    for path in routes.UNPREFIXED_OPENAI:
        add(path, routes.OPENAI_ENDPOINTS[path])

    async def version() -> Response:
        return JSONResponse(engine.version())

    for path in ("/version", "/openai/version"):
        router.add_api_route(path, version, methods=["GET"])

    @router.get("/openai/v1/models")
    async def openai_models() -> Response:
        return await engine.openai_models()

    if pipeline.vllm_serve:  # `python -m runtime serve`: vLLM's /v1/models (KServe's otherwise)
        router.add_api_route("/v1/models", openai_models, methods=["GET"])

    @router.get("/health")
    @router.get("/ping")  # SageMaker's probe, next to its /invocations
    @router.post("/ping")
    async def health() -> Response:
        """vLLM's probe: 200 (empty) while the engine serves, 503 otherwise (loading, draining,
        dead), as the runtime's readiness."""
        pipeline.check_ready()
        return Response(status_code=200)

    return router
