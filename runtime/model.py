"""The KServe model: v2 infer (REST and gRPC, through KServe's DataPlane) onto the engine.

Why a ``kserve.Model``: KServe's ModelServer then serves ``/v2/models/{m}/infer``, gRPC
ModelInfer, model metadata and readiness for it, and KServe tooling recognises the process.
The model does not own the engine's life (``runtime.server`` does); its readiness is the
lifecycle's, never a flag set once at start-up.
"""

from __future__ import annotations

import logging
from typing import Any

from kserve import Model
from kserve.errors import InferenceError, InvalidInput, ModelNotFound, ModelNotReady
from kserve.protocol.infer_type import InferRequest, InferResponse

from runtime.engine.base import Engine
from runtime.errors import ServingError
from runtime.lifecycle import Lifecycle
from runtime.metrics import count_request, current_protocol
from runtime.protocol import v2

logger = logging.getLogger(__name__)


def to_kserve_error(exc: ServingError, model_name: str) -> Exception:
    """Render a runtime error as the KServe exception with the same HTTP status / gRPC code."""
    if exc.http_status == 404:
        return ModelNotFound(model_name)
    if exc.http_status == 503:
        return ModelNotReady(model_name, exc.message)
    if 400 <= exc.http_status < 500:
        return InvalidInput(exc.message)
    return InferenceError(exc.message)


class LLMModel(Model):
    """A text-generation model served over Open Inference Protocol v2."""

    def __init__(self, name: str, engine: Engine, lifecycle: Lifecycle) -> None:
        super().__init__(name)
        self.llm = engine
        self.lifecycle = lifecycle

    # KServe reads and writes `ready`; here it is a view of the lifecycle.
    @property  # type: ignore[override]
    def ready(self) -> bool:
        return self.lifecycle.ready

    @ready.setter
    def ready(self, value: bool) -> None:  # KServe's base class assigns it; the lifecycle decides
        pass

    def load(self) -> bool:
        return self.ready

    async def healthy(self) -> bool:
        return self.ready

    def get_input_types(self) -> list[dict[str, Any]]:
        return v2.input_metadata()

    def get_output_types(self) -> list[dict[str, Any]]:
        return v2.output_metadata()

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        protocol = "v2-grpc" if payload.from_grpc else "v2-rest"
        token = current_protocol.set(protocol)
        outcome = "server_error"
        try:
            request = v2.decode_request(payload)
            completions = await self.llm.complete(request)
            outcome = "success"
            return v2.encode_response(payload, self.name, completions)
        except ServingError as exc:
            outcome = "client_error" if exc.http_status < 500 else "server_error"
            if outcome == "server_error":
                logger.error("v2 request %s failed: %s", payload.id, exc)
            raise to_kserve_error(exc, self.name) from None
        finally:
            count_request(self.name, protocol, outcome)
            current_protocol.reset(token)
