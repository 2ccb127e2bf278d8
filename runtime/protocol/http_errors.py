"""HTTP rendering of errors, once per protocol, for every HTTP route.

Why one table: a ``ServingError`` raised anywhere (the gate, a codec, the engine adapter)
becomes the error shape of the protocol the route belongs to: OpenAI's error object on OpenAI
routes, ``{"error": message}`` on v2, the generate extension and KServe v1. Framework failures
(malformed JSON, schema validation, unknown path) are rendered the same way, never as a 500.
Logged by the one rule in ``runtime.errors.log_error``.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime import routes
from runtime.errors import ClientError, ServingError, StatusError, log_error

logger = logging.getLogger(__name__)


# Anthropic's error types by status (its API reference, "Errors"); others: api_error.
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    503: "overloaded_error", 529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    return ANTHROPIC_ERROR_TYPES.get(status, "invalid_request_error" if status < 500
                                     else "api_error")


def error_body(protocol: str | None, status: int, message: str) -> dict[str, Any]:
    """The error object of ``protocol``."""
    if protocol == routes.ANTHROPIC:
        return {"type": "error",
                "error": {"type": anthropic_error_type(status), "message": message}}
    if protocol == routes.OPENAI:
        try:
            kind = HTTPStatus(status).phrase.replace(" ", "") + "Error"
        except ValueError:
            kind = "Error"
        return {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return {"error": message}


def error_headers(exc: ServingError) -> dict[str, str]:
    """Headers that go with an error: Retry-After for 429/503, WWW-Authenticate for 401."""
    headers = {}
    retry = getattr(exc, "retry_after", None)
    if retry:
        headers["retry-after"] = str(retry)
    if exc.http_status == HTTPStatus.UNAUTHORIZED:
        headers["www-authenticate"] = "Bearer"
    return headers


def render(exc: ServingError, protocol: str | None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of an error on ``protocol``."""
    status = int(exc.http_status)
    body = json.dumps(error_body(protocol, status, exc.message)).encode()
    return status, {"content-type": "application/json", **error_headers(exc)}, body


def _protocol_of(request: Request) -> str | None:
    return routes.classify(routes.unversioned(request.url.path)).protocol


def _response(exc: ServingError, request: Request) -> JSONResponse:
    log_error(exc, f"{request.method} {request.url.path}")
    status = int(exc.http_status)
    return JSONResponse(error_body(_protocol_of(request), status, exc.message),
                        status_code=status, headers=error_headers(exc))


async def serving_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    return _response(exc, request)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's body validation (KServe's v2 routes): malformed JSON and wrong shapes are 400."""
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = errors[0].get("ctx", {}).get("error", "")
        message = f"malformed JSON body: {detail}".strip()
    else:
        message = "invalid request: " + "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors[:10])
    return _response(ClientError(message), request)


async def http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    """Framework errors (unknown path, wrong method, undecodable body) in the route's shape."""
    assert isinstance(exc, StarletteHTTPException)
    err = StatusError(str(exc.detail), exc.status_code)
    response = _response(err, request)
    for name, value in (getattr(exc, "headers", None) or {}).items():
        response.headers[name] = value
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Register the handler table on the ModelServer's app."""
    app.add_exception_handler(ServingError, serving_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
