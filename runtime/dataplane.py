"""KServe's DataPlane with health that tells the truth.

Why: KServe's ``DataPlane.live()`` always answers alive and ``ready()`` answers true for any
predictor (FACTS.md; kserve#6259, #3845). REST ``/v2/health/*``, KServe's ``/`` and gRPC
ServerLive/ServerReady all ask the DataPlane, so answering from the lifecycle here fixes every
one of them at once.
"""

from __future__ import annotations

import grpc
from grpc_interceptor.exceptions import GrpcException
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from runtime.errors import ForbiddenError
from runtime.lifecycle import Lifecycle


class RuntimeDataPlane(DataPlane):
    """DataPlane whose liveness and readiness come from the runtime's lifecycle."""

    def __init__(self, model_registry: ModelRepository, lifecycle: Lifecycle) -> None:
        super().__init__(model_registry=model_registry)
        self._lifecycle = lifecycle

    async def live(self) -> dict[str, str]:  # type: ignore[override]
        return {"status": "alive" if self._lifecycle.live else "dead"}

    async def ready(self) -> bool:
        return self._lifecycle.ready

    def metadata(self) -> dict:
        meta = super().metadata()
        meta["extensions"] = [*meta.get("extensions", []), "generate"]
        return meta


class RepositoryLockedError(ForbiddenError, GrpcException):
    """403 on REST (the runtime's handler) and PERMISSION_DENIED on gRPC (KServe's interceptor
    passes ``GrpcException`` through)."""

    def __init__(self, model_name: str) -> None:
        ForbiddenError.__init__(
            self, f"model {model_name} cannot be loaded or unloaded through the repository "
                  "extension: this runtime serves one model for the life of the process")
        self.status_code = grpc.StatusCode.PERMISSION_DENIED
        self.details = self.message


class LockedRepositoryExtension(ModelRepositoryExtension):
    """KServe's model-repository extension with load/unload refused.

    Why: unloading stops the engine for good and loading cannot restart it, so one anonymous
    ``POST /v2/repository/models/{m}/unload`` would take the pod out of service. The index
    (listing) still works.
    """

    async def load(self, model_name: str) -> None:  # type: ignore[override]
        raise RepositoryLockedError(model_name)

    async def unload(self, model_name: str) -> None:  # type: ignore[override]
        raise RepositoryLockedError(model_name)
