"""Triton's generate extension: ``/v2/models/{m}/generate`` and ``/generate_stream``.

Request ``{"text_input": str, "parameters": {...}}`` (sampling settings may also sit at the top
level, as Triton allows); response ``{"model_name", "model_version", "text_output"}``. The
stream is ``text/event-stream`` with one ``data: {...}`` object per piece of text as the engine
produces it; the last event adds ``finish_reason`` and token counts. An error after the stream
started is an event ``{"error": ...}``; before, a JSON ``{"error": ...}`` with a 4xx/5xx.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from runtime import limits
from runtime.admission import Admission
from runtime.engine.base import Delta, Engine, GenerationRequest
from runtime.errors import ClientError, EngineUnavailableError, ModelNotFoundError, ServingError
from runtime.lifecycle import Lifecycle
from runtime.limits import Limits
from runtime.metrics import count_request, current_protocol
from runtime.protocol import v2

logger = logging.getLogger(__name__)
PROTOCOL = "v2-generate"


def decode_generate(body: Any) -> GenerationRequest:
    """Check a generate request body and turn it into a one-prompt GenerationRequest."""
    if not isinstance(body, dict):
        raise ClientError("request body must be a JSON object")
    text = body.get("text_input")
    if text is None:
        raise ClientError("missing 'text_input' (a string)")
    if not isinstance(text, str):
        raise ClientError(f"'text_input' must be a string, got {type(text).__name__}")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise ClientError("'parameters' must be a JSON object")
    top = {k: v for k, v in body.items() if k not in ("text_input", "parameters", "id", "stream")}
    merged = {**top, **params}
    merged.pop("stream", None)
    return GenerationRequest(prompts=[text], params=v2.sampling_parameters(merged),
                             chat=v2.chat_flag(merged), request_id=body.get("id"))


def _outcome(exc: ServingError) -> str:
    if exc.http_status in (429, 503):
        return "rejected"
    return "client_error" if exc.http_status < 500 else "server_error"


def build_router(engine: Engine, lifecycle: Lifecycle, served_names: list[str],
                 admission: Admission, request_limits: Limits) -> APIRouter:
    """The generate extension's routes, bound to one engine."""
    router = APIRouter()

    async def _prepare(model_name: str, request: Request) -> GenerationRequest:
        if model_name not in served_names:
            raise ModelNotFoundError(model_name)
        if not lifecycle.ready:
            raise EngineUnavailableError(f"model {model_name} is not ready ({lifecycle.reason})")
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ClientError(f"malformed JSON body: {exc}") from None
        limits.check_text(body)
        gen = decode_generate(body)
        limits.check(request_limits, gen.params, 1)
        admission.admit(1)
        return gen

    def _base(model_name: str) -> dict[str, Any]:
        return {"model_name": model_name, "model_version": ""}

    @router.post("/v2/models/{model_name}/generate")
    async def generate(model_name: str, request: Request) -> JSONResponse:
        token = current_protocol.set(PROTOCOL)
        outcome = "server_error"
        try:
            gen = await _prepare(model_name, request)
            (result,) = await engine.complete(gen)
            outcome = "success"
            return JSONResponse({**_base(model_name), "text_output": result.text,
                                 "finish_reason": result.finish_reason})
        except ServingError as exc:
            outcome = _outcome(exc)
            raise
        except BaseException:
            outcome = "aborted"
            raise
        finally:
            current_protocol.reset(token)
            count_request(model_name, PROTOCOL, outcome)

    @router.post("/v2/models/{model_name}/generate_stream")
    async def generate_stream(model_name: str, request: Request) -> StreamingResponse:
        token = current_protocol.set(PROTOCOL)
        try:
            gen = await _prepare(model_name, request)
            deltas = await engine.stream(gen)
            # Some checks run only once the engine has the request: wait for the first piece
            # so that bad input is still a 4xx before the stream starts (TTFT is unchanged:
            # nothing could be sent before the first token anyway).
            try:
                first = await anext(aiter(deltas), None)
            except BaseException:
                await deltas.aclose()  # type: ignore[attr-defined]
                raise
        except ServingError as exc:
            count_request(model_name, PROTOCOL, _outcome(exc))
            raise
        finally:
            current_protocol.reset(token)
        return StreamingResponse(_events(model_name, first, deltas, _base(model_name)),
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    async def _chain(first: Delta | None, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
        if first is None:
            return
        yield first
        async for d in rest:
            yield d

    async def _events(model_name: str, first: Delta | None, deltas: AsyncIterator[Delta],
                      base: dict[str, Any]) -> AsyncIterator[str]:
        outcome = "aborted"
        try:
            async for d in _chain(first, deltas):
                event: dict[str, Any] = {**base, "text_output": d.text}
                if d.finish_reason is not None or d.completion_tokens is not None:
                    event |= {"finish_reason": d.finish_reason,
                              "usage": {"prompt_tokens": d.prompt_tokens,
                                        "completion_tokens": d.completion_tokens}}
                yield f"data: {json.dumps(event)}\n\n"
            outcome = "success"
        except ServingError as exc:
            outcome = _outcome(exc)
            logger.warning("generate_stream failed mid-stream: %s", exc)
            yield f"data: {json.dumps({'error': exc.message})}\n\n"
        except Exception as exc:  # the status is already 200: report in-band, never hang
            outcome = "server_error"
            logger.exception("generate_stream failed mid-stream")
            yield f"data: {json.dumps({'error': f'internal error: {exc}'})}\n\n"
        finally:
            count_request(model_name, PROTOCOL, outcome)
            close = getattr(deltas, "aclose", None)
            if close is not None:
                await close()

    return router
