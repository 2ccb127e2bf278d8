"""One error hierarchy for every protocol.

Why: the same bad request must fail the same way on OpenAI, v2 REST, the generate extension
and gRPC. Each error carries its HTTP status and gRPC status-code name; each protocol renders
it once, in its own error shape (``{"error": msg}`` for v2, OpenAI's error object for OpenAI,
a status + details for gRPC). In the style of vLLM's client/server error split.
"""

from __future__ import annotations

from http import HTTPStatus


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


class ModelNotFoundError(ClientError):
    """The request names a model this server does not serve (404 / NOT_FOUND)."""

    http_status = HTTPStatus.NOT_FOUND.value
    grpc_code = "NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"Model with name {name} does not exist.")


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


def from_status(status: int, message: str) -> ServingError:
    """Map a status reported by the engine's own serving code onto this hierarchy."""
    if status == HTTPStatus.NOT_FOUND:
        err: ServingError = ClientError(message)
        err.http_status = HTTPStatus.NOT_FOUND
        err.grpc_code = "NOT_FOUND"
        return err
    if 400 <= status < 500:
        err = ClientError(message)
        err.http_status = status
        return err
    if status == HTTPStatus.SERVICE_UNAVAILABLE:
        return EngineUnavailableError(message)
    return ServerError(message)
