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
    NotFoundError,
    ServerError,
    ServingError,
    StatusError,
    UnsupportedError,
)
from runtime.lifecycle import Lifecycle

logger = logging.getLogger(__name__)


def as_serving_error(exc: Exception) -> ServingError:
    """Any exception from KServe's DataPlane, servicer or the model as the runtime's error.

    Why: KServe renders its own errors with a traceback at ERROR for what are client errors
    (a missing header, an unknown model); the runtime renders each once, in the protocol's
    shape, and logs it once (``runtime.errors.log_error``: a server error with the traceback
    of the exception kept as its cause).
    """
    if isinstance(exc, ServingError):
        return exc
    err: ServingError
    if isinstance(exc, kserve_errors.ModelNotFound):
        err = NotFoundError(str(exc.reason))
    elif isinstance(exc, kserve_errors.InvalidInput | kserve_errors.InferenceError
                    | kserve_errors.UnsupportedProtocol):
        err = ClientError(str(exc.reason))
    elif isinstance(exc, kserve_errors.ServerNotReady | kserve_errors.ServerNotLive
                    | kserve_errors.ModelNotReady):
        err = EngineUnavailableError(str(getattr(exc, "reason", exc)))
    elif isinstance(exc, NotImplementedError):
        err = UnsupportedError(str(exc) or "not implemented")
    elif isinstance(exc, GrpcException):
        err = StatusError(exc.details or str(exc), 400, exc.status_code.name)
    else:
        err = ServerError(f"internal error: {type(exc).__name__}")
    err.__cause__ = exc
    return err


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
            raise as_serving_error(exc) from exc

    async def infer(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().infer(*args, **kwargs)
        except Exception as exc:
            raise as_serving_error(exc) from exc

    async def model_metadata(self, model_name: str) -> dict:
        try:
            return await super().model_metadata(model_name)
        except Exception as exc:
            raise as_serving_error(exc) from exc

    def metadata(self) -> dict:
        meta = super().metadata()
        meta["extensions"] = [*meta.get("extensions", []), "generate"]
        return meta

