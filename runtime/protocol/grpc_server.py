"""The gRPC v2 server: KServe's servicer behind the runtime's pipeline interceptor.

Why not KServe's ``GRPCServer`` as it is: its interceptors log every call at INFO and every
client error with a traceback, it checks no key, and nothing bounds the message size. Here one
interceptor runs the pipeline's transport steps for every RPC, as the HTTP gate does for
every route: request id, the API key (on every RPC but the health ones), readiness and model
resolution for inference, the in-flight count and one count of each inference outcome, and
one rendering of every error as a gRPC status.

``ModelStreamInfer`` (Triton's bidirectional stream, which KServe's proto lacks) is registered
as a generic handler under the same service name; the interceptor checks its key once per
stream, and ``StreamInfer`` runs the pipeline's per-request steps (readiness, model, in-flight,
admission, one outcome count) for every request read from it, as ModelInfer does.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent import futures
from typing import Any

import grpc
from grpc import aio
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferRequest

from runtime import routes
from runtime.dataplane import as_serving_error
from runtime.errors import OverloadedError, ServingError, log_error
from runtime.logs import new_request_id, request_id
from runtime.pipeline import Pipeline
from runtime.protocol import triton

logger = logging.getLogger(__name__)

HEALTH_RPCS = frozenset({"ServerLive", "ServerReady", "ModelReady"})
INFERENCE_RPCS = frozenset({"ModelInfer"})
OPERATOR_RPCS = frozenset({"RepositoryModelLoad", "RepositoryModelUnload"})  # operator key
STREAM_RPCS = frozenset({"ModelStreamInfer"})
SERVICE = "inference.GRPCInferenceService"


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
        rpc = details.method.rsplit("/", 1)[-1]
        if handler is not None and handler.stream_stream is not None and rpc in STREAM_RPCS:
            return self._stream_handler(rpc, handler)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        # The key is read from the call's metadata before its message is parsed: a caller
        # without it gets its refusal without the server deserializing up to 8 MiB for it.
        metadata = {m.key: m.value for m in (details.invocation_metadata or ())}
        refused = rpc not in HEALTH_RPCS and not self.pipeline.key_accepted(
            metadata.get("authorization"), operator=rpc in OPERATOR_RPCS)
        deserializer = _unparsed if refused else handler.request_deserializer

        async def call(request: Any, context: aio.ServicerContext) -> Any:
            metadata = {m.key: m.value for m in (context.invocation_metadata() or ())}
            token = request_id.set(new_request_id(metadata.get("x-request-id")))
            try:
                await context.send_initial_metadata((("x-request-id", request_id.get()),))
                try:
                    return await self._run(rpc, inner, request, context, metadata)
                except Exception as exc:
                    err = as_serving_error(exc)
                log_error(err, f"gRPC {rpc}")
                retry = getattr(err, "retry_after", None)
                if retry:  # HTTP's Retry-After, as trailing metadata (seconds)
                    context.set_trailing_metadata((("retry-after", str(retry)),))
                await context.abort(grpc.StatusCode[err.grpc_code], err.message)
            finally:
                request_id.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=deserializer,
            response_serializer=handler.response_serializer)

    def _stream_handler(self, rpc: str, handler: Any) -> Any:
        """The key once per stream (the metadata is the stream's); the per-request steps run
        in ``StreamInfer``."""
        inner = handler.stream_stream

        async def call(requests: AsyncIterator[Any], context: aio.ServicerContext) -> None:
            metadata = {m.key: m.value for m in (context.invocation_metadata() or ())}
            token = request_id.set(new_request_id(metadata.get("x-request-id")))
            try:
                try:  # the stream's key; each request read from it is checked again
                    self.pipeline.authenticate(metadata.get("authorization"))
                except ServingError as err:
                    log_error(err, f"gRPC {rpc}")
                    await context.abort(grpc.StatusCode[err.grpc_code], err.message)
                await context.send_initial_metadata((("x-request-id", request_id.get()),))
                await inner(requests, context)
            finally:
                request_id.reset(token)

        return grpc.stream_stream_rpc_method_handler(
            call, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    async def _run(self, rpc: str, inner: Callable[..., Awaitable[Any]], request: Any,
                   context: aio.ServicerContext, metadata: dict[str, str]) -> Any:
        pipeline = self.pipeline
        if rpc in HEALTH_RPCS:
            return await inner(request, context)
        if rpc in OPERATOR_RPCS:
            pipeline.authorize_operator(metadata.get("authorization"))
            return await inner(request, context)
        if rpc not in INFERENCE_RPCS:
            pipeline.authenticate(metadata.get("authorization"))
            return await inner(request, context)
        with pipeline.request(routes.V2_GRPC, _model_of(request) or pipeline.default_model,
                              authorization=metadata.get("authorization"), route=rpc,
                              carrier=metadata) as record:
            try:
                response = await inner(request, context)
            except ServingError:
                raise
            except Exception as exc:
                raise as_serving_error(exc) from exc
            record.outcome = "success"
            return response


def server_credentials(certfile: str, keyfile: str, refresh: bool) -> grpc.ServerCredentials:
    """TLS for the gRPC port from the HTTPS certificate files. With ``refresh``
    (``--enable_ssl_refresh``), a new handshake after the files changed presents the new
    certificate, as HTTPS does; connections already open keep theirs."""

    def identity() -> tuple[float, float]:
        return os.stat(certfile).st_mtime_ns, os.stat(keyfile).st_mtime_ns

    def load() -> Any:
        with open(keyfile, "rb") as k, open(certfile, "rb") as c:
            return grpc.ssl_server_certificate_configuration([(k.read(), c.read())])

    if not refresh:
        with open(keyfile, "rb") as k, open(certfile, "rb") as c:
            return grpc.ssl_server_credentials([(k.read(), c.read())])
    seen = {"id": identity()}

    def fetch() -> Any:
        try:
            now = identity()
            if now == seen["id"]:
                return None
            config = load()  # a half-written pair fails here: the old one stays, retried later
        except Exception as exc:  # noqa: BLE001 - any failure keeps the working certificate
            logger.warning("gRPC certificate not reloaded: %s", exc)
            return None
        seen["id"] = now
        logger.info("gRPC certificate reloaded from %s", certfile)
        return config

    return grpc.dynamic_ssl_server_credentials(load(), fetch)


def _unparsed(payload: bytes) -> None:
    """The request deserializer of a call refused for its key: the bytes are not parsed."""
    return None


def _raw(payload: bytes) -> bytes:
    return payload


class StreamInfer:
    """``ModelStreamInfer``: every request read from the stream runs concurrently (Triton's
    decoupled models do), through the same pipeline steps as ModelInfer; its responses are
    written as they come, errors as in-stream ``error_message`` responses, so the stream stays
    usable. A cancelled stream cancels its requests, which aborts their engine requests."""

    def __init__(self, pipeline: Pipeline, data_plane: Any, max_requests: int) -> None:
        self.pipeline = pipeline
        self.data_plane = data_plane
        self.max_requests = max_requests  # in flight at once on one stream

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self, request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=_raw)})

    async def __call__(self, requests: AsyncIterator[Any], context: aio.ServicerContext) -> None:
        lock = asyncio.Lock()
        tasks: set[asyncio.Task[None]] = set()

        async def write(payload: bytes) -> None:
            async with lock:
                await context.write(payload)

        metadata = {m.key: m.value for m in (context.invocation_metadata() or ())}
        authorization = metadata.get("authorization")
        try:
            async for request in requests:
                crowded = len(tasks) >= self.max_requests
                task = asyncio.ensure_future(
                    self._one(request, write, authorization, crowded, metadata))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:  # the client closed its side: finish what it asked for
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, request: Any, write: Callable[[bytes], Awaitable[None]],
                   authorization: str | None, crowded: bool = False,
                   metadata: dict[str, str] | None = None) -> None:
        """One request of the stream, through the pipeline's sequence. The key is checked
        for every request, so a stream opened before the key was rotated stops being served
        once the old key is no longer accepted. ``crowded``: the stream already has its
        maximum in flight; the request is refused in-band (and counted ``rejected``)."""
        token = request_id.set(new_request_id(request.id or None))

        def room() -> None:
            if crowded:
                raise OverloadedError(f"{self.max_requests} requests are already in flight on "
                                      "this stream; wait for an answer or open another stream")

        try:
            with self.pipeline.request(routes.V2_GRPC,
                                       request.model_name or self.pipeline.default_model,
                                       authorization=authorization, checks=room,
                                       route="ModelStreamInfer", carrier=metadata) as record:
                wrote = False
                try:
                    served = self.data_plane.get_model_from_registry(
                        request.model_name or self.pipeline.default_model)
                    # the messages' bytes, written from the engine's deltas (triton_stream)
                    async for message in served.stream_messages(InferRequest.from_grpc(request)):
                        await write(message)
                        wrote = True
                except Exception as exc:
                    err = as_serving_error(exc)
                    if wrote:  # a failure after the first response: the server's
                        record.fail(err)
                    raise err from exc
                record.outcome = "success"
        except Exception as exc:
            err = as_serving_error(exc)
            log_error(err, "gRPC ModelStreamInfer")
            answer = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            try:
                await write(triton.stream_response(answer.SerializeToString(), err.message))
            except Exception:  # the stream itself is gone: nobody is left to tell
                logger.info("gRPC ModelStreamInfer: stream closed before the error was sent")
        finally:
            request_id.reset(token)


class RuntimeServicer(InferenceServicer):
    """KServe's servicer with repository load/unload that read Triton's ``parameters`` (a LoRA
    adapter's ``lora_path``) and answer KServe's response messages."""

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:  # noqa: N802
        name, parameters = triton.repository_request(request)
        await self._mode_repository_extension.load(name, parameters)
        return pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:  # noqa: N802
        name, _ = triton.repository_request(request)
        await self._mode_repository_extension.unload(name)
        return pb.RepositoryModelUnloadResponse(model_name=name, isUnloaded=True)


class RuntimeGRPCServer(GRPCServer):
    """KServe's gRPC server with the pipeline interceptor and a bounded message size."""

    def __init__(self, port: int, data_plane: Any, repository: Any, pipeline: Pipeline, *,
                 max_message_bytes: int, grace_period: int = 30,
                 max_concurrent_rpcs: int, max_stream_requests: int,
                 credentials: grpc.ServerCredentials | None = None) -> None:
        super().__init__(port, data_plane, repository, kwargs={}, grace_period=grace_period)
        self._pipeline = pipeline
        self._max_message_bytes = max_message_bytes
        self._credentials = credentials
        self._max_concurrent_rpcs = max_concurrent_rpcs  # --max_concurrent_rpcs
        self._max_stream_requests = max_stream_requests  # --max_stream_requests

    async def start(self, max_workers: int) -> None:
        servicer = RuntimeServicer(self._data_plane, self._model_repository_extension)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(PipelineInterceptor(self._pipeline),),
            options=[("grpc.max_receive_message_length", self._max_message_bytes)],
            maximum_concurrent_rpcs=self._max_concurrent_rpcs,  # beyond: RESOURCE_EXHAUSTED
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            servicer, self._server)
        self._server.add_generic_rpc_handlers(
            (StreamInfer(self._pipeline, self._data_plane,
                         self._max_stream_requests).handler(),))
        if self._credentials is not None:  # the HTTPS certificate: a key never goes in clear
            self._server.add_secure_port(f"[::]:{self._port}", self._credentials)
        else:
            self._server.add_insecure_port(f"[::]:{self._port}")
        logger.info("gRPC server on port %d (%s)", self._port,
                    "TLS" if self._credentials is not None else "plaintext")
        await self._server.start()
        await self._server.wait_for_termination()
