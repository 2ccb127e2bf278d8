"""KServe's DataPlane with health that tells the truth.

Why: KServe's ``DataPlane.live()`` always answers alive and ``ready()`` answers true for any
predictor (docs/platform-notes.md; kserve#6259, #3845). REST ``/v2/health/*``, KServe's ``/`` and gRPC
ServerLive/ServerReady all ask the DataPlane, so answering from the lifecycle here fixes every
one of them at once.
"""

from __future__ import annotations

import logging
from typing import Any

from grpc_interceptor.exceptions import GrpcException
from kserve import errors as kserve_errors
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane

from runtime.errors import (
    ClientError,
    EngineUnavailableError,
    ServerError,
    ServingError,
)
from runtime.lifecycle import Lifecycle

logger = logging.getLogger(__name__)


def as_serving_error(exc: Exception) -> ServingError:
    """Any exception from KServe's DataPlane, servicer or the model as the runtime's error.

    Why: KServe renders its own errors with a traceback at ERROR for what are client errors
    (a missing header, an unknown model); the runtime renders each once, in the protocol's
    shape, and logs a client error as one line.
    """
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, kserve_errors.ModelNotFound):
        err: ServingError = ClientError(str(exc.reason))
        err.http_status, err.grpc_code = 404, "NOT_FOUND"
        return err
    if isinstance(exc, kserve_errors.InvalidInput | kserve_errors.InferenceError
                  | kserve_errors.UnsupportedProtocol):
        return ClientError(str(exc.reason))
    if isinstance(exc, kserve_errors.ServerNotReady | kserve_errors.ServerNotLive
                  | kserve_errors.ModelNotReady):
        return EngineUnavailableError(str(getattr(exc, "reason", exc)))
    if isinstance(exc, NotImplementedError):
        err = ClientError(str(exc) or "not implemented")
        err.http_status, err.grpc_code = 501, "UNIMPLEMENTED"
        return err
    if isinstance(exc, GrpcException):
        err = ClientError(exc.details or str(exc))
        err.grpc_code = exc.status_code.name
        return err
    logger.error("request failed", exc_info=exc)
    return ServerError(f"internal error: {type(exc).__name__}")


class RuntimeDataPlane(DataPlane):
    """DataPlane whose liveness and readiness come from the runtime's lifecycle, and whose
    failures are the runtime's errors (rendered once per protocol, without tracebacks)."""

    def __init__(self, model_registry: ModelRepository, lifecycle: Lifecycle) -> None:
        super().__init__(model_registry=model_registry)
        self._lifecycle = lifecycle

    async def live(self) -> dict[str, str]:
        return {"status": "alive" if self._lifecycle.live else "dead"}

    async def ready(self) -> bool:
        return self._lifecycle.ready

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().decode(*args, **kwargs)
        except Exception as exc:
            raise as_serving_error(exc) from None

    async def infer(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().infer(*args, **kwargs)
        except Exception as exc:
            raise as_serving_error(exc) from None

    async def model_metadata(self, model_name: str) -> dict:
        try:
            return await super().model_metadata(model_name)
        except Exception as exc:
            raise as_serving_error(exc) from None

    def metadata(self) -> dict:
        meta = super().metadata()
        meta["extensions"] = [*meta.get("extensions", []), "generate"]
        return meta

