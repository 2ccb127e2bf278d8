"""The predictor's HTTP app assembled in-process around a fake engine (the unit tier).

Why: the routes, the gate and the error handlers are the same objects ``python -m runtime``
installs (``runtime.server.install_routes`` plus KServe's own REST endpoints), so the routing
table, keys, limits and error shapes can be tested in milliseconds; only the engine is fake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.admission import Admission
from runtime.lifecycle import Lifecycle, State
from runtime.pipeline import Pipeline
from runtime.server import build_pipeline, install_routes
from runtime.settings import RuntimeSettings
from tests.support.fake_engine import FakeEngine


@dataclass
class Assembled:
    """An assembled app and the parts a test inspects or steers."""

    app: Any
    engine: FakeEngine
    pipeline: Pipeline
    lifecycle: Lifecycle
    admission: Admission
    repository: Any = None  # the model repository extension (load / unload)


def assemble(*, engine: FakeEngine | None = None, state: State = State.READY,
             **settings: Any) -> Assembled:
    """KServe's FastAPI app with the runtime's gate, routes and handlers, on a fake engine."""
    from fastapi import FastAPI
    from kserve.model_repository import ModelRepository
    from kserve.protocol.rest.server import RESTServer

    from runtime.dataplane import RuntimeDataPlane
    from runtime.server import build_models

    values = {"model_name": "smollm2", "model_dir": "/unused", **settings}
    config = RuntimeSettings(**values)
    engine = engine or FakeEngine(config.model_name)
    lifecycle = Lifecycle()
    if state is not State.LOADING:
        lifecycle.set(state, "test")
    admission = Admission(config.model_name, capacity=4, max_waiting=config.max_waiting_requests)
    pipeline = build_pipeline(config, lifecycle, admission)
    repository = ModelRepository()
    _, extension = build_models(repository, engine, lifecycle, pipeline, config)
    app = FastAPI()
    dataplane = RuntimeDataPlane(repository, lifecycle)
    install_routes(app, engine, pipeline, config, extension)
    rest = RESTServer("unused:app", dataplane, extension, http_port=0)
    rest._register_endpoints(app)
    rest._add_exception_handlers(app)
    rest._add_middlewares(app)  # KServe's timing middleware (kserve.trace), outside the gate
    return Assembled(app, engine, pipeline, lifecycle, admission, extension)
