"""KServe's DataPlane with health that tells the truth.

Why: KServe's ``DataPlane.live()`` always answers alive and ``ready()`` answers true for any
predictor (FACTS.md; kserve#6259, #3845). REST ``/v2/health/*``, KServe's ``/`` and gRPC
ServerLive/ServerReady all ask the DataPlane, so answering from the lifecycle here fixes every
one of them at once.
"""

from __future__ import annotations

from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane

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
