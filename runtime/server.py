"""Assembly of the predictor: settings -> engine -> KServe ModelServer with every route.

Why here and not at import time: nothing is parsed, built or mounted until ``run`` is called,
so tests and tools can import the package freely. Layering, MLServer style: transports
(the HTTP gate in front of KServe's REST server and the runtime's routes; the gRPC server with
its pipeline interceptor) -> one pipeline -> codecs -> one engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

from runtime import tracing
from runtime.admission import Admission
from runtime.auth import ApiKey, ApiKeyError
from runtime.engine.base import Engine
from runtime.lifecycle import Lifecycle, State
from runtime.pipeline import Pipeline
from runtime.settings import EngineArgsError, RuntimeSettings

logger = logging.getLogger(__name__)


class Supervisor:
    """Owns the engine's life: start, health checks, drain on SIGTERM, stop.

    DEAD within one health interval of the engine process dying (readiness and liveness turn
    false, so Kubernetes restarts the pod). On SIGTERM/SIGINT: DRAINING at once (readiness
    false, new requests 503), in-flight requests get ``drain_timeout`` seconds, then the
    servers stop and the engine shuts down.
    """

    def __init__(self, engine: Engine, lifecycle: Lifecycle, admission: Admission,
                 settings: RuntimeSettings, model_server: Any,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.on_ready = on_ready
        self.lifecycle = lifecycle
        self.admission = admission
        self.settings = settings
        self.model_server = model_server
        self.stopping = asyncio.Event()

    def request_stop(self) -> None:
        """Called when KServe unloads the model (its own signal path); ends supervision."""
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_soon_threadsafe(self.stopping.set)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, _f: loop.call_soon_threadsafe(self._on_signal, s))

    def _on_signal(self, sig: int) -> None:
        if self.lifecycle.state is State.DRAINING:
            logger.warning("second signal %s while draining: stopping now", sig)
            self._stop_servers(sig, force=True)
            return
        if self.lifecycle.state is State.STOPPED:
            return
        if self.lifecycle.state is not State.READY:
            logger.info("signal %s while %s: stopping", sig, self.lifecycle.state.value)
            self._stop_servers(sig, force=True)
            return
        self.lifecycle.set(State.DRAINING, f"draining after signal {sig}")
        asyncio.get_running_loop().create_task(self._drain(sig))

    async def _drain(self, sig: int) -> None:
        in_flight = self.admission.requests
        logger.info("draining %d in-flight requests (timeout %.0f s)", in_flight,
                    self.settings.drain_timeout)
        drained = await self.admission.wait_idle(self.settings.drain_timeout)
        if drained:
            logger.info("drained; stopping")
        else:
            logger.warning("drain timeout: %d requests still in flight are cut off",
                           self.admission.requests)
        # cut off means now: uvicorn's graceful stop would give open streams 5 s more, past
        # the drain timeout that was chosen to fit the pod's grace period
        self._stop_servers(sig, force=not drained)

    def _stop_servers(self, sig: int, force: bool = False) -> None:
        """Stop the listeners; ``force``: close open connections (streams) too, rather than
        waiting for uvicorn's graceful shutdown."""
        rest = getattr(self.model_server, "_rest_server", None)
        if rest is not None:
            rest._server.should_exit = True
            if force:
                rest._server.force_exit = True
            else:  # idle keep-alive connections (HTTPS ones seen) must not hold the exit
                asyncio.get_running_loop().call_later(
                    5.0, lambda: setattr(rest._server, "force_exit", True))
        self.model_server.stop(sig)  # gRPC server stop + model unload -> request_stop()
        self.stopping.set()

    async def _listeners_up(self, timeout: float = 30.0) -> None:
        """Wait until the HTTP server listens, so that it answers 503 (not a refused
        connection) while the engine loads."""
        rest = getattr(self.model_server, "_rest_server", None)
        deadline = asyncio.get_running_loop().time() + timeout
        while rest is None or not rest._server.started:
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.05)
            rest = getattr(self.model_server, "_rest_server", None)

    def _refresh_certificates(self) -> Any:
        """With ``--enable-ssl-refresh``: reload the HTTPS certificate when its files change."""
        settings = self.settings
        rest = getattr(self.model_server, "_rest_server", None)
        context = getattr(getattr(getattr(rest, "_server", None), "config", None), "ssl", None)
        if not (settings.enable_ssl_refresh and context is not None and settings.ssl_certfile
                and settings.ssl_keyfile):
            return None
        from runtime.engine.vllm_tls import refresh_certificates

        return refresh_certificates(context, certfile=settings.ssl_certfile,
                                    keyfile=settings.ssl_keyfile)

    def _limit_connections(self) -> None:
        """``--max_connections`` as uvicorn's ``limit_concurrency`` (KServe does not pass it):
        read by each new connection, so it applies from the first one when set before the
        listener accepts."""
        rest = getattr(self.model_server, "_rest_server", None)
        if rest is not None:
            rest._server.config.limit_concurrency = self.settings.max_connections

    async def run(self) -> None:
        """Start the engine, then watch its health until shutdown."""
        self._limit_connections()
        loop = type(asyncio.get_running_loop())
        logger.info("event loop: %s.%s", loop.__module__, loop.__qualname__)
        await self._listeners_up()
        refresher = self._refresh_certificates()
        await self.engine.start()
        if self.on_ready is not None:
            self.on_ready()
        self.lifecycle.set(State.READY, "engine answered")
        self._install_signals()
        try:
            while not self.stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(),
                                           self.settings.health_check_interval)
                if self.stopping.is_set():
                    break
                try:
                    await asyncio.wait_for(self.engine.check_health(), timeout=5)
                except Exception as exc:  # any failure of the health check means no engine
                    self.lifecycle.set(State.DEAD, f"engine health check failed: {exc!r}")
                    logger.error("engine is dead: %r; readiness and liveness are now false",
                                 exc)
                    return
        finally:
            if refresher is not None:
                refresher.stop()
            if self.lifecycle.state is not State.DEAD:
                self.lifecycle.set(State.STOPPED, "shutdown")
            with contextlib.suppress(Exception):
                await self.engine.stop()


def install_routes(app: Any, engine: Engine, pipeline: Pipeline, settings: RuntimeSettings,
                   repository: Any) -> None:
    """Add the runtime's front door and routes to KServe's app. They are registered before
    KServe's own (which KServe adds when its REST server starts), so where paths coincide,
    ours answer; the gate 404s every path outside ``runtime.routes``' table."""
    from runtime.protocol import gate, generate, http_errors, metadata, openai, v1
    from runtime.protocol import repository as repo

    http_errors.install_error_handlers(app)
    app.add_middleware(gate.Gate, pipeline=pipeline, max_request_bytes=settings.max_request_bytes)
    gate.outermost(app)
    app.include_router(openai.build_router(engine, pipeline))
    app.include_router(generate.build_router(engine, pipeline))
    app.include_router(v1.build_router(engine, pipeline))
    app.include_router(metadata.build_router(engine, pipeline))
    app.include_router(repo.build_router(repository))
    if settings.enable_operator_routes:
        from starlette.routing import Mount

        # vLLM's LoRA load/unload are the repository's (its checks), ahead of vLLM's app
        app.include_router(repo.build_vllm_lora_router(repository))
        app.router.routes.append(Mount("/openai", app=OperatorRoutes(engine)))


class OperatorRoutes:
    """vLLM's own app, reached only for the operator paths the gate lets through
    (``--enable_operator_routes``, with the operator key), but LoRA load/unload, which
    ``protocol.repository.build_vllm_lora_router`` answers."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from runtime.errors import EngineUnavailableError
        from runtime.protocol.http_errors import render

        app = self.engine.openai_app
        if app is None:
            status, headers, body = render(EngineUnavailableError("engine loading"), "openai")
            await send({"type": "http.response.start", "status": status,
                        "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)


def build_pipeline(settings: RuntimeSettings, lifecycle: Lifecycle,
                   admission: Admission) -> Pipeline:
    """The pipeline every transport shares, from the settings."""
    key = ApiKey.from_sources(
        settings.api_key.get_secret_value() if settings.api_key else None,
        settings.api_key_file)
    operator = ApiKey.from_sources(
        settings.operator_key.get_secret_value() if settings.operator_key else None,
        settings.operator_key_file, env_var="OPERATOR_API_KEY", name="operator_key")
    sources = "(--operator_key_file, --operator_key or $OPERATOR_API_KEY)"
    for flag, on in (("--enable_operator_routes", settings.enable_operator_routes),
                     ("--enable_adapter_loading", settings.enable_adapter_loading)):
        if on and not operator.enabled:
            raise ApiKeyError(f"{flag} requires an operator key {sources}, which must differ "
                              "from the inference key")
    if key.enabled and operator.enabled and key.current() == operator.current():
        raise ApiKeyError("the operator key must differ from the inference key: with the "
                          "same key every client would be an operator")
    if operator.enabled:
        logger.info("operator key set: repository load/unload%s need it",
                    " and the operator routes" if settings.enable_operator_routes else "")
    return Pipeline(lifecycle=lifecycle, admission=admission, api_key=key, operator_key=operator,
                    request_limits=settings.limits,
                    served_names=[settings.model_name, *settings.served_model_aliases],
                    protect_metrics=settings.protect_metrics,
                    operator_routes=settings.enable_operator_routes,
                    max_adapters=settings.max_adapters, vllm_serve=settings.vllm_serve,
                    tracing=tracing.start(settings.otlp_traces_endpoint))


def build_models(registry: Any, engine: Engine, lifecycle: Lifecycle, pipeline: Pipeline,
                 settings: RuntimeSettings) -> tuple[Any, Any]:
    """The base model registered under every served name in KServe's ``registry``, and the
    repository extension that serves LoRA adapters as further models."""
    from runtime.model import LLMModel
    from runtime.repository import AdapterRepository

    def make_model(name: str) -> LLMModel:
        return LLMModel(name, engine, lifecycle, pipeline)

    base = make_model(settings.model_name)
    for name in pipeline.served_names:
        registry.update(base, name)
    repository = AdapterRepository(
        registry, engine=engine, adapters=pipeline.adapters, make_model=make_model,
        base_dir=settings.model_dir,
        enable_loading=settings.enable_adapter_loading and pipeline.operator_key.enabled,
        allowed_dirs=settings.allowed_adapter_dirs)
    return base, repository


class _LoopPolicy(asyncio.DefaultEventLoopPolicy):
    """Makes new event loops with uvicorn's loop factory."""

    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        super().__init__()
        self._factory = factory

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return self._factory()


def use_event_loop(kind: str) -> None:
    """Make ``--event_loop`` (``auto``: uvloop when installed, as uvicorn and ``vllm serve``)
    the loop the server runs on.

    Why here: KServe's ``ModelServer.start()`` runs ``asyncio.run()`` itself and hands the
    setting to uvicorn, which applies it only to loops it creates, so without this the server
    ran on the default asyncio loop whatever the flag said, while plain vLLM runs on uvloop:
    a cost on every streamed chunk (socket writes are most of the front end's time). The
    choice is uvicorn's own (its loop factories), so ``auto`` means what it means there.
    """
    import uvicorn

    factory = uvicorn.Config(app="runtime", loop=kind).get_loop_factory()
    if factory is not None:
        asyncio.set_event_loop_policy(_LoopPolicy(factory))


def run(settings: RuntimeSettings) -> None:
    """Build and serve until SIGTERM/SIGINT. Blocks."""
    lifecycle = Lifecycle()
    admission = Admission(settings.model_name, capacity=256,
                          max_waiting=settings.max_waiting_requests)
    pipeline = build_pipeline(settings, lifecycle, admission)
    from runtime.engine.vllm_engine import VLLMEngine

    engine = VLLMEngine(settings, admission)  # parses engine arguments: bad flags fail first
    if settings.enable_adapter_loading and engine.max_lora_rank is None:
        raise EngineArgsError("--enable_adapter_loading needs vLLM's --enable-lora (and "
                              "--max-lora-rank at least the rank of the adapters to load)")

    # kserve is imported only now: it parses sys.argv at import time (docs/platform-notes.md).
    from kserve import ModelServer
    from kserve.model_server import app

    from runtime.dataplane import RuntimeDataPlane
    from runtime.protocol.grpc_server import RuntimeGRPCServer, server_credentials

    server = ModelServer(
        http_port=settings.http_port,
        grpc_port=settings.grpc_port,
        workers=1,
        max_threads=settings.max_threads,
        enable_grpc=False,  # the runtime's own gRPC server, below
        enable_docs_url=False,
        enable_latency_logging=settings.enable_latency_logging,
        access_log_format=settings.access_log_format,
        event_loop=settings.event_loop,
        timeout_keep_alive=settings.timeout_keep_alive,
        grace_period=settings.grace_period,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
    )
    server.dataplane = RuntimeDataPlane(server.registered_models, lifecycle)
    model, repository = build_models(server.registered_models, engine, lifecycle, pipeline,
                                     settings)
    server.model_repository_extension = repository
    install_routes(app, engine, pipeline, settings, repository)
    if settings.enable_grpc:
        credentials = None
        if settings.ssl_certfile and settings.ssl_keyfile:
            credentials = server_credentials(settings.ssl_certfile, settings.ssl_keyfile,
                                             settings.enable_ssl_refresh)
        grpc_server = RuntimeGRPCServer(
            settings.grpc_port, server.dataplane, server.model_repository_extension, pipeline,
            max_message_bytes=settings.max_request_bytes, grace_period=settings.grace_period,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
            max_stream_requests=settings.max_stream_requests, credentials=credentials)
        server._grpc_server = grpc_server  # ModelServer.stop() stops it
        server.servers.append(grpc_server.start(settings.max_threads))

    supervisor = Supervisor(engine, lifecycle, admission, settings, server,
                            on_ready=repository.register_static)
    original_stop = model.stop

    def stop_model() -> None:  # KServe calls model.stop() (via unload) when it stops
        supervisor.request_stop()
        original_stop()

    model.stop = stop_model
    # KServe's start() refuses a model that is not ready yet; ours becomes ready once the engine
    # has loaded, so it is registered above and its supervisor joins KServe's servers.
    server.servers.append(supervisor.run())
    use_event_loop(settings.event_loop)
    server.start([])
