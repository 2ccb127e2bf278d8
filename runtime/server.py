"""Assembly of the predictor: settings -> engine -> KServe ModelServer with every route.

Why here and not at import time: nothing is parsed, built or mounted until ``run`` is called,
so tests and tools can import the package freely. Layering, MLServer style: transports
(KServe's REST/gRPC servers, the generate router, the OpenAI gateway) -> one engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from runtime.engine.vllm_engine import VLLMEngine
from runtime.lifecycle import Lifecycle, State
from runtime.settings import RuntimeSettings

logger = logging.getLogger(__name__)


async def supervise(engine: VLLMEngine, lifecycle: Lifecycle, settings: RuntimeSettings,
                    stopping: asyncio.Event) -> None:
    """Start the engine, then check its health until shutdown; DEAD within one interval of
    the engine process dying, so readiness and liveness turn false (Kubernetes restarts us)."""
    await engine.start()
    lifecycle.set(State.READY, "engine answered")
    try:
        while not stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), settings.health_check_interval)
            if stopping.is_set():
                break
            try:
                await asyncio.wait_for(engine.check_health(), timeout=5)
            except Exception as exc:  # any failure of the health check means no engine
                lifecycle.set(State.DEAD, f"engine health check failed: {exc!r}")
                logger.error("engine is dead: %r; readiness and liveness are now false", exc)
                return
    finally:
        if lifecycle.state is not State.DEAD:
            lifecycle.set(State.STOPPED, "shutdown")
        with contextlib.suppress(Exception):
            await engine.stop()


def install_routes(app: Any, engine: VLLMEngine, lifecycle: Lifecycle,
                   settings: RuntimeSettings, served_names: list[str]) -> None:
    """Add the runtime's routes to KServe's app. They are registered before KServe's own
    (which KServe adds when its REST server starts), so where paths coincide, ours answer."""
    from starlette.routing import Mount, Route

    from runtime.protocol import generate, http_errors, metadata, openai

    http_errors.install_error_handlers(app)
    app.add_middleware(http_errors.BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.include_router(generate.build_router(engine, lifecycle, served_names))
    app.include_router(metadata.build_router(engine, served_names))
    gateway = openai.OpenAIGateway(engine, lifecycle, settings.model_name)
    app.router.routes.append(Mount("/openai", app=gateway))
    for path in openai.UNPREFIXED_ROUTES:
        app.router.routes.append(Route(path, endpoint=gateway, methods=["POST"]))


def run(settings: RuntimeSettings) -> None:
    """Build and serve until SIGTERM/SIGINT. Blocks."""
    engine = VLLMEngine(settings)  # parses the engine arguments: bad flags fail before serving
    lifecycle = Lifecycle()

    # kserve is imported only now: it parses sys.argv at import time (FACTS.md).
    from kserve import ModelServer
    from kserve.model_server import app

    from runtime.dataplane import RuntimeDataPlane
    from runtime.model import LLMModel

    model = LLMModel(settings.model_name, engine, lifecycle)
    server = ModelServer(
        http_port=settings.http_port,
        grpc_port=settings.grpc_port,
        workers=1,
        max_threads=settings.max_threads,
        enable_grpc=settings.enable_grpc,
        enable_docs_url=settings.enable_docs_url,
        enable_latency_logging=settings.enable_latency_logging,
        access_log_format=settings.access_log_format,
        event_loop=settings.event_loop,
        timeout_keep_alive=settings.timeout_keep_alive,
        grace_period=settings.grace_period,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
    )
    server.dataplane = RuntimeDataPlane(server.registered_models, lifecycle)
    names = [settings.model_name, *settings.served_model_aliases]
    for name in names:
        server.register_model(model, name)
    install_routes(app, engine, lifecycle, settings, names)

    stopping = asyncio.Event()
    original_stop = model.stop

    def stop_model() -> None:  # KServe calls model.stop() (via unload) on SIGTERM/SIGINT
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_soon_threadsafe(stopping.set)
        original_stop()

    model.stop = stop_model  # type: ignore[method-assign]
    # KServe's start() refuses a model that is not ready yet; ours becomes ready once the engine
    # has loaded, so it is registered above and its supervisor joins KServe's servers.
    server.servers.append(supervise(engine, lifecycle, settings, stopping))
    server.start([])
