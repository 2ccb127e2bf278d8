"""The KServe model: v2 infer (REST and gRPC, through KServe's DataPlane) onto the engine.

Why a ``kserve.Model``: KServe's ModelServer then serves ``/v2/models/{m}/infer``, gRPC
ModelInfer, model metadata and readiness for it, and KServe tooling recognises the process.
The model does not own the engine's life (``runtime.server`` does); its readiness is the
lifecycle's, never a flag set once at start-up. On REST the HTTP gate has already checked the
key, the lifecycle and counted the request; gRPC requests get the same checks here.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import grpc
from grpc_interceptor.exceptions import GrpcException
from kserve import Model
from kserve.protocol.infer_type import InferRequest, InferResponse

from runtime import limits
from runtime.admission import Admission
from runtime.engine.base import Engine
from runtime.errors import EngineUnavailableError, ServingError, UnauthorizedError
from runtime.lifecycle import Lifecycle
from runtime.logs import new_request_id, request_id
from runtime.metrics import count_request, current_protocol
from runtime.protocol import v2
from runtime.settings import RuntimeSettings

logger = logging.getLogger(__name__)


def grpc_error(exc: ServingError) -> GrpcException:
    """Render a runtime error as the gRPC status KServe's interceptor passes through."""
    err = GrpcException(details=exc.message)
    err.status_code = grpc.StatusCode[exc.grpc_code]
    return err


class LLMModel(Model):
    """A text-generation model served over Open Inference Protocol v2."""

    def __init__(self, name: str, engine: Engine, lifecycle: Lifecycle, admission: Admission,
                 settings: RuntimeSettings) -> None:
        super().__init__(name)
        self.llm = engine
        self.lifecycle = lifecycle
        self.admission = admission
        self.settings = settings

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

    def _grpc_gate(self, headers: dict[str, str]) -> None:
        key = self.settings.api_key
        if key is not None:
            scheme, _, token = (headers.get("authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                     key.encode()):
                raise UnauthorizedError("missing or invalid API key")
        if not self.lifecycle.ready:
            raise EngineUnavailableError(f"model is not ready ({self.lifecycle.reason})")

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        grpc_call = bool(payload.from_grpc)
        protocol = "v2-grpc" if grpc_call else "v2-rest"
        token = current_protocol.set(protocol)
        rid = request_id.set(new_request_id((headers or {}).get("x-request-id"))) if grpc_call \
            else None
        outcome = "server_error"
        entered = False
        try:
            if grpc_call:
                self._grpc_gate(headers or {})
                self.admission.enter()
                entered = True
            request = v2.decode_request(payload)
            limits.check_text(request.prompts, "input 'text_input'")
            limits.check_text(request.params, "parameters")
            limits.check(self.settings.limits, request.params, len(request.prompts))
            self.admission.admit(len(request.prompts))
            completions = await self.llm.complete(request)
            outcome = "success"
            return v2.encode_response(payload, self.name, completions)
        except ServingError as exc:
            outcome = "client_error" if exc.http_status < 500 else "server_error"
            if exc.http_status in (429, 503):
                outcome = "rejected"
            if exc.http_status >= 500:
                logger.error("v2 request failed: %s", exc)
            if grpc_call:
                raise grpc_error(exc) from None
            raise
        except BaseException:
            outcome = "aborted"
            raise
        finally:
            if entered:
                self.admission.leave()
            count_request(self.name, protocol, outcome)
            current_protocol.reset(token)
            if rid is not None:
                request_id.reset(rid)
