"""HTTP rendering of errors, and the request-size limit, for every HTTP route.

Why one table: a ``ServingError`` raised anywhere in a v2 or generate route becomes
``{"error": message}`` with the error's own status; framework validation failures become 400
(malformed JSON) or 422 (schema), never 500. vLLM's mounted OpenAI app renders its own errors
in OpenAI's shape.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from runtime.errors import PayloadTooLargeError, ServingError

logger = logging.getLogger(__name__)


async def serving_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    if exc.http_status >= 500:
        logger.error("%s %s -> %s: %s (request id %s)", request.method, request.url.path,
                     exc.http_status, exc.message, request.headers.get("x-request-id", "-"))
    retry = getattr(exc, "retry_after", None)
    headers = {"retry-after": str(retry)} if retry else None
    return JSONResponse({"error": exc.message}, status_code=int(exc.http_status), headers=headers)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = errors[0].get("ctx", {}).get("error", "")
        return JSONResponse({"error": f"malformed JSON body: {detail}".strip()}, status_code=400)
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors]
    return JSONResponse({"error": "invalid request: " + "; ".join(parts)}, status_code=422)


async def http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    """Framework errors (unknown path, undecodable body, ...) in the v2 shape."""
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    """Register the handler table on the ModelServer's app."""
    app.add_exception_handler(ServingError, serving_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)


class BodySizeLimit:
    """ASGI middleware: 413 for a body larger than ``max_bytes`` (by Content-Length, or while
    reading a chunked body), before any route or engine sees it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send) -> None:
        body = (b'{"error": "request body exceeds the limit of %d bytes"}' % self.max_bytes)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)


class _TooLarge(PayloadTooLargeError):
    """Raised from ``receive`` when a chunked body passes the limit; rendered as 413."""

    def __init__(self) -> None:
        super().__init__("request body exceeds the configured limit")
