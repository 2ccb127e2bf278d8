"""One error hierarchy for every protocol.

Why: the same bad request must fail the same way on OpenAI, v2 REST, the generate extension
and gRPC. Each error carries its HTTP status and gRPC status-code name; each protocol renders
it once, in its own error shape (``{"error": msg}`` for v2, OpenAI's error object for OpenAI,
a status + details for gRPC). In the style of vLLM's client/server error split.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

logger = logging.getLogger(__name__)


class ServingError(Exception):
    """Base of every error the runtime reports to a client."""

    http_status: int = HTTPStatus.INTERNAL_SERVER_ERROR.value
    grpc_code: str = "INTERNAL"  # a grpc.StatusCode member name; no grpc import needed here

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ClientError(ServingError):
    """The request is malformed or out of range (400 / INVALID_ARGUMENT)."""

    http_status = HTTPStatus.BAD_REQUEST.value
    grpc_code = "INVALID_ARGUMENT"


class NotFoundError(ClientError):
    """What the request names does not exist here (404 / NOT_FOUND)."""

    http_status = HTTPStatus.NOT_FOUND.value
    grpc_code = "NOT_FOUND"


class ModelNotFoundError(NotFoundError):
    """The request names a model this server does not serve (404 / NOT_FOUND)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"Model with name {name} does not exist.")


class UnsupportedError(ClientError):
    """The operation exists in the protocol but this server does not implement it
    (501 / UNIMPLEMENTED)."""

    http_status = HTTPStatus.NOT_IMPLEMENTED.value
    grpc_code = "UNIMPLEMENTED"


class StatusError(ClientError):
    """A client error with a status reported by other code (vLLM's serving code, the web
    framework: 405, 422, ...) that no subclass here names; the status is fixed at
    construction."""

    def __init__(self, message: str, status: int, grpc_code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.http_status = status
        self.grpc_code = grpc_code


class PayloadTooLargeError(ClientError):
    """The request body exceeds the configured limit (413 / RESOURCE_EXHAUSTED)."""

    http_status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE.value
    grpc_code = "RESOURCE_EXHAUSTED"


class UnauthorizedError(ClientError):
    """Missing or wrong API key (401 / UNAUTHENTICATED)."""

    http_status = HTTPStatus.UNAUTHORIZED.value
    grpc_code = "UNAUTHENTICATED"


class OverloadedError(ClientError):
    """Too many requests are waiting for the engine (429 / RESOURCE_EXHAUSTED); retry later."""

    http_status = HTTPStatus.TOO_MANY_REQUESTS.value
    grpc_code = "RESOURCE_EXHAUSTED"
    retry_after = 1


class ForbiddenError(ClientError):
    """The operation is not allowed on this server (403 / PERMISSION_DENIED)."""

    http_status = HTTPStatus.FORBIDDEN.value
    grpc_code = "PERMISSION_DENIED"


class ServerError(ServingError):
    """The server is at fault (500 / INTERNAL). Logged with the request id."""


class EngineUnavailableError(ServerError):
    """The engine is loading, draining or dead (503 / UNAVAILABLE)."""

    http_status = HTTPStatus.SERVICE_UNAVAILABLE.value
    grpc_code = "UNAVAILABLE"
    retry_after = 5


_BY_STATUS: dict[int, type[ClientError]] = {}  # filled below, once every class exists


def from_status(status: int, message: str) -> ServingError:
    """Map a status reported by the engine's own serving code onto this hierarchy."""
    if status == HTTPStatus.SERVICE_UNAVAILABLE:
        return EngineUnavailableError(message)
    if 400 <= status < 500 or status == HTTPStatus.NOT_IMPLEMENTED:
        kind = _BY_STATUS.get(status)
        return kind(message) if kind is not None else StatusError(message, status)
    return ServerError(message)


_BY_STATUS.update({cls.http_status: cls for cls in (
    ClientError, NotFoundError, PayloadTooLargeError, UnauthorizedError, OverloadedError,
    ForbiddenError, UnsupportedError)})


def log_error(exc: ServingError, where: str) -> None:
    """The one rule for logging a failed request, on every transport: one INFO line for a
    client error; a WARNING for 503 (loading, draining and a dead engine are states the
    lifecycle logs once, and every request refused meanwhile would otherwise be an ERROR);
    an ERROR for a server error, with the traceback of its cause when it has one."""
    if isinstance(exc, EngineUnavailableError):
        logger.warning("%s -> %d: %s", where, exc.http_status, exc.message)
    elif exc.http_status >= 500:
        logger.error("%s -> %d: %s", where, exc.http_status, exc.message,
                     exc_info=exc.__cause__ if exc.__cause__ is not None else None)
    else:
        logger.info("%s -> %d: %s", where, exc.http_status, exc.message)
