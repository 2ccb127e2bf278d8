"""The KServe model: v2 infer (REST and gRPC, through KServe's DataPlane) onto the engine.

Why a ``kserve.Model``: KServe's ModelServer then serves ``/v2/models/{m}/infer``, gRPC
ModelInfer, model metadata and readiness for it, and KServe tooling recognises the process.
The model does not own the engine's life (``runtime.server`` does); its readiness is the
lifecycle's, never a flag set once at start-up. The transports (the HTTP gate, the gRPC
interceptor) have already run the pipeline's first steps: key, readiness, model, counting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from kserve import Model
from kserve.protocol.infer_type import InferRequest, InferResponse

from runtime.engine.base import Delta, Engine
from runtime.lifecycle import Lifecycle
from runtime.pipeline import Pipeline
from runtime.protocol import triton, v2
from runtime.protocol.triton_stream import StreamEncoder

_T = TypeVar("_T")


class LLMModel(Model):
    """A text-generation model served over Open Inference Protocol v2."""

    def __init__(self, name: str, engine: Engine, lifecycle: Lifecycle,
                 pipeline: Pipeline) -> None:
        super().__init__(name)
        self.llm = engine
        self.lifecycle = lifecycle
        self.pipeline = pipeline

    # KServe reads and writes `ready`; here it is a view of the lifecycle.
    @property
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
        """One answer; a ``stream`` switch is ignored (a unary call cannot stream)."""
        text = v2.decode_request(payload)
        return await self._complete(payload, text)

    async def _complete(self, payload: InferRequest, text: v2.TextRequest) -> InferResponse:
        prepared = self.llm.prepare(text.prompts, text.params, chat=text.chat, stream=False,
                                    limits=self.pipeline.limits, model=self.name)
        self.pipeline.admit(prepared.work)
        completions = await self.llm.complete(prepared)
        return v2.encode_response(payload, self.name, completions, text)

    async def stream_predict(self, payload: InferRequest) -> AsyncIterator[InferResponse]:
        """gRPC ModelStreamInfer as KServe responses: with ``stream`` true, one response per
        engine output and a last one marked ``triton_final_response`` carrying the finish
        reason and counts; otherwise the one answer, marked final. Bad input raises before the
        first response; closing the iterator (a cancelled stream) aborts the engine request.
        ``stream_messages`` writes the same responses as bytes; this is its reference."""
        text = v2.decode_request(payload)

        def piece(delta: Delta, first: bool, final: bool) -> InferResponse:
            return v2.encode_delta(payload, self.name, delta, text, first=first, final=final)

        async for response in self._responses(payload, text, piece, lambda r: r):
            yield response

    def stream_messages(self, payload: InferRequest) -> AsyncIterator[bytes]:
        """``stream_predict``'s responses as Triton's ``ModelStreamInferResponse`` bytes, the
        streamed pieces written straight from the engine's deltas (``triton_stream``): the
        per-token path of ModelStreamInfer builds no ``InferResponse``. Bad input raises
        here, before the iterator exists."""
        text = v2.decode_request(payload)
        encoder = StreamEncoder(payload, self.name, text.options, text.prompts[0])

        def whole(response: InferResponse) -> bytes:
            return triton.stream_response(response.to_grpc().SerializeToString())

        return self._responses(payload, text, encoder.piece, whole)

    async def _responses(self, payload: InferRequest, text: v2.TextRequest,
                         piece: Callable[[Delta, bool, bool], _T],
                         whole: Callable[[InferResponse], _T]) -> AsyncIterator[_T]:
        """The one sequence behind both: ``piece(delta, first, final)`` writes each streamed
        response, ``whole`` the one answer of a request that does not stream."""
        if not text.options.stream:
            response = await self._complete(payload, text)
            response.parameters = {**(response.parameters or {}), "triton_final_response": True}
            yield whole(response)
            return
        prepared = self.llm.prepare(text.prompts, text.params, chat=text.chat, stream=True,
                                    limits=self.pipeline.limits, model=self.name)
        self.pipeline.admit(prepared.work)
        deltas = await self.llm.stream(prepared)
        first = final = False
        try:
            first = True
            async for delta in deltas:
                final = delta.finish_reason is not None or delta.completion_tokens is not None
                yield piece(delta, first, final)
                first = False
        finally:
            await deltas.aclose()
        if not final:  # the engine ended without usage: still tell the client it is over
            yield piece(Delta(0, ""), first, True)
