"""Triton's generate extension: ``/v2/models/{m}/generate`` and ``/generate_stream``.

Request ``{"text_input": str, "parameters": {...}}`` (sampling settings may also sit at the top
level, as Triton allows); response ``{"model_name", "model_version", "text_output",
"finish_reason", "usage"}``. The stream is ``text/event-stream`` with one ``data: {...}`` object
per piece of text as the engine produces it; the last event adds ``finish_reason`` and token
counts. An error after the stream started is an event ``{"error": ...}``; before, a JSON
``{"error": ...}`` with a 4xx/5xx (rendered by the runtime's error handlers).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from runtime.engine.base import Delta, Engine, PreparedRequest
from runtime.errors import ClientError, ServingError
from runtime.pipeline import Pipeline
from runtime.protocol import v2
from runtime.protocol.json_body import read_json

logger = logging.getLogger(__name__)


def decode_generate(body: Any) -> v2.TextRequest:
    """Check a generate request body and turn it into a one-prompt TextRequest."""
    if not isinstance(body, dict):
        raise ClientError("request body must be a JSON object")
    text = body.get("text_input")
    if text is None:
        raise ClientError("missing 'text_input' (a string)")
    if not isinstance(text, str):
        raise ClientError(f"'text_input' must be a string, got {type(text).__name__}")
    params = body.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ClientError("'parameters' must be a JSON object")
    top = {k: v for k, v in body.items() if k not in ("text_input", "parameters", "id", "stream")}
    merged = {**top, **params}
    merged.pop("stream", None)
    return v2.text_request([text], merged)


def _usage(prompt_tokens: int | None, completion_tokens: int | None) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}


def build_router(engine: Engine, pipeline: Pipeline) -> APIRouter:
    """The generate extension's routes, bound to one engine and the pipeline."""
    router = APIRouter()

    async def _prepare(request: Request, model_name: str, stream: bool) -> PreparedRequest:
        text = decode_generate(await read_json(request))
        prepared = engine.prepare(text.prompts, text.params, chat=text.chat, stream=stream,
                                  limits=pipeline.limits, model=model_name)
        pipeline.admit(prepared.work)
        return prepared

    def _base(model_name: str) -> dict[str, Any]:
        return {"model_name": model_name, "model_version": ""}

    @router.post("/v2/models/{model_name}/generate")
    async def generate(model_name: str, request: Request) -> JSONResponse:
        (result,) = await engine.complete(await _prepare(request, model_name, stream=False))
        return JSONResponse({**_base(model_name), "text_output": result.text,
                             "finish_reason": result.finish_reason,
                             "usage": _usage(result.prompt_tokens, result.completion_tokens)})

    @router.post("/v2/models/{model_name}/generate_stream")
    async def generate_stream(model_name: str, request: Request) -> StreamingResponse:
        deltas = await engine.stream(await _prepare(request, model_name, stream=True))
        # Some checks run only once the engine has the request: wait for the first piece
        # so that bad input is still a 4xx before the stream starts (TTFT is unchanged:
        # nothing could be sent before the first token anyway).
        try:
            first = await anext(aiter(deltas), None)
        except BaseException:
            await deltas.aclose()
            raise
        call = getattr(request.state, "call", None)
        return StreamingResponse(_events(first, deltas, _base(model_name), call),
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    async def _events(first: Delta | None, deltas: AsyncGenerator[Delta, None], base: dict[str, Any],
                      call: Any) -> AsyncIterator[str]:
        try:
            pending = first
            while pending is not None:
                event: dict[str, Any] = {**base, "text_output": pending.text}
                if pending.finish_reason is not None or pending.completion_tokens is not None:
                    event |= {"finish_reason": pending.finish_reason,
                              "usage": _usage(pending.prompt_tokens, pending.completion_tokens)}
                yield f"data: {json.dumps(event)}\n\n"
                pending = await anext(deltas, None)
        except ServingError as exc:
            if call is not None:
                call.fail(exc)
            logger.warning("generate_stream failed mid-stream: %s", exc)
            yield f"data: {json.dumps({'error': exc.message})}\n\n"
        except Exception as exc:  # the status is already 200: report in-band, never hang
            if call is not None:
                call.fail(exc)
            logger.exception("generate_stream failed mid-stream")
            # the type only: an exception's text may carry internal detail (logged above)
            yield f"data: {json.dumps({'error': f'internal error: {type(exc).__name__}'})}\n\n"
        finally:
            close = getattr(deltas, "aclose", None)
            if close is not None:
                await close()

    return router
