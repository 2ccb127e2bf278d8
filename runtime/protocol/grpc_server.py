"""The gRPC v2 server: KServe's servicer behind the runtime's pipeline interceptor.

Why not KServe's ``GRPCServer`` as it is: its interceptors log every call at INFO and every
client error with a traceback, it checks no key, and nothing bounds the message size. Here one
interceptor runs the pipeline's transport steps for every RPC, as the HTTP gate does for
every route: request id, the API key (on every RPC but the health ones), readiness and model
resolution for inference, the in-flight count and one count of each inference outcome, and
one rendering of every error as a gRPC status.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import Any

import grpc
from grpc import aio
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer

from runtime import routes
from runtime.dataplane import as_serving_error
from runtime.errors import ServingError
from runtime.logs import new_request_id, request_id
from runtime.metrics import count_request
from runtime.pipeline import Pipeline, outcome_of

logger = logging.getLogger(__name__)

HEALTH_RPCS = frozenset({"ServerLive", "ServerReady", "ModelReady"})
INFERENCE_RPCS = frozenset({"ModelInfer"})


def _model_of(request: Any) -> str | None:
    for field in ("model_name", "name"):
        value = getattr(request, field, None)
        if isinstance(value, str) and value:
            return value
    return None


class PipelineInterceptor(aio.ServerInterceptor):
    """The pipeline's transport steps for every gRPC call; see the module docstring."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        rpc = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        async def call(request: Any, context: aio.ServicerContext) -> Any:
            metadata = {m.key: m.value for m in (context.invocation_metadata() or ())}
            token = request_id.set(new_request_id(metadata.get("x-request-id")))
            try:
                try:
                    return await self._run(rpc, inner, request, context, metadata)
                except Exception as exc:
                    err = as_serving_error(exc)
                level = logging.INFO if err.http_status < 500 else logging.ERROR
                logger.log(level, "gRPC %s -> %s: %s", rpc, err.grpc_code, err.message)
                await context.abort(grpc.StatusCode[err.grpc_code], err.message)
            finally:
                request_id.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    async def _run(self, rpc: str, inner: Callable[..., Awaitable[Any]], request: Any,
                   context: aio.ServicerContext, metadata: dict[str, str]) -> Any:
        pipeline = self.pipeline
        if rpc in HEALTH_RPCS:
            return await inner(request, context)
        if rpc not in INFERENCE_RPCS:
            pipeline.authenticate(metadata.get("authorization"))
            return await inner(request, context)
        name = _model_of(request)
        try:
            pipeline.authenticate(metadata.get("authorization"))
            pipeline.check_ready()
            model = pipeline.resolve(name)
        except ServingError as exc:
            count_request(pipeline.label(name), routes.V2_GRPC, outcome_of(int(exc.http_status)))
            raise
        with pipeline.call(routes.V2_GRPC, model) as record:
            try:
                response = await inner(request, context)
            except ServingError:
                raise
            except Exception as exc:
                raise as_serving_error(exc) from exc
            record.outcome = "success"
            return response


class RuntimeGRPCServer(GRPCServer):
    """KServe's gRPC server with the pipeline interceptor and a bounded message size."""

    def __init__(self, port: int, data_plane: Any, repository: Any, pipeline: Pipeline, *,
                 max_message_bytes: int, grace_period: int = 30) -> None:
        super().__init__(port, data_plane, repository, kwargs={}, grace_period=grace_period)
        self._pipeline = pipeline
        self._max_message_bytes = max_message_bytes

    async def start(self, max_workers: int) -> None:
        servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(PipelineInterceptor(self._pipeline),),
            options=[("grpc.max_receive_message_length", self._max_message_bytes)],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            servicer, self._server)
        self._server.add_insecure_port(f"[::]:{self._port}")
        logger.info("gRPC server on port %d", self._port)
        await self._server.start()
        await self._server.wait_for_termination()
