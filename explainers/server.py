"""The KServe side: a ``kserve.Model`` whose ``explain()`` answers ``:explain``, readiness that
follows the predictor, error rendering, and ``ModelServer`` start-up.

Why this shape: KServe sends an explainer exactly ``POST /v1/models/{name}:explain``, with the
arguments ``--model_name``, ``--predictor_host`` and ``--http_port``. The model itself is
ready once the tokenizer and methods are loaded, but the explainer is useless without its
predictor, so readiness (``/v1/models/{name}`` and ``/v2/health/ready``) probes the predictor.
The ``:explain`` route itself skips that check (KServe passes
``disable_predictor_health_check``) so a request made while the predictor is down gets a 502
with the reason instead of a bare 503. This is the only module that imports ``kserve``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

import kserve
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kserve.errors import ModelNotFound
from kserve.model_server import app as kserve_app
from kserve.predictor_config import PredictorConfig
from kserve.protocol.dataplane import DataPlane

from explainers.errors import ClientError, ExplainerError
from explainers.explainer import Explainer, Limits
from explainers.methods.base import MethodSettings
from explainers.methods.registry import load_methods
from explainers.predictor import PredictorClient, base_url

logger = logging.getLogger("explainers")

METHODS_ROUTE = "/v1/explainer/methods"


class LLMExplainerModel(kserve.Model):
    """The model KServe registers under ``--model_name``; ``explain()`` runs the pipeline."""

    def __init__(self, name: str, explainer: Explainer) -> None:
        super().__init__(name)
        self.explainer = explainer
        self.ready = True  # tokenizer and methods are loaded before construction

    def load(self) -> bool:
        # KServe calls load() on every request when healthy() is false; nothing to reload.
        return self.ready

    def validate(self, payload: Any) -> Any:
        # The request schema is checked by explainers.request (KServe's v1 check would read
        # the predictor config, which describes no KServe predictor here).
        return payload

    async def explain(self, payload: Any, headers: dict[str, str] | None = None) -> dict:
        if isinstance(payload, bytes | str):
            # KServe passes the raw body through when the content type is not JSON
            try:
                payload = json.loads(payload)
            except ValueError as exc:
                raise ClientError(f"the request body is not JSON: {exc}") from exc
        return await self.explainer.explain_body(payload)


class ExplainerDataPlane(DataPlane):
    """KServe's data plane with readiness that includes the predictor's."""

    def __init__(self, model_registry: Any, client: PredictorClient) -> None:
        super().__init__(model_registry=model_registry)
        self.predictor_client = client

    async def ready(self) -> bool:
        return await self.predictor_client.is_ready()

    async def model_ready(self, model_name: str,
                          disable_predictor_health_check: bool = False) -> bool:
        if self._model_registry.get_model(model_name) is None:
            raise ModelNotFound(model_name)
        local = await self._model_registry.is_model_ready(model_name)
        if disable_predictor_health_check or not local:
            return local
        return await self.predictor_client.is_ready()


async def _explainer_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ExplainerError)
    level = logging.WARNING if exc.status < 500 else logging.ERROR
    logger.log(level, "explain failed (%d): %s", exc.status, exc.message)
    return JSONResponse(status_code=exc.status,
                        content={"error": exc.message, "type": type(exc).__name__})


def _install_routes(app: FastAPI, explainer: Explainer) -> None:
    app.add_exception_handler(ExplainerError, _explainer_error_handler)

    async def list_methods() -> dict[str, Any]:
        return {"methods": explainer.describe()}

    app.add_api_route(METHODS_ROUTE, list_methods, methods=["GET"])


def build_parser() -> argparse.ArgumentParser:
    """The explainer's command line (what KServe's controller passes, plus settings)."""
    p = argparse.ArgumentParser(prog="python -m explainers", description=__doc__.split("\n")[0])
    p.add_argument("--model_name", required=True, help="name served at /v1/models/{name}")
    p.add_argument("--predictor_host", required=True,
                   help="HOST[:PORT] (or URL) of the predictor serving the OpenAI API")
    p.add_argument("--http_port", type=int, default=8080)
    p.add_argument("--model_dir", default="/mnt/models",
                   help="the model folder the predictor serves (tokenizer; weights for IG)")
    p.add_argument("--methods", default="",
                   help="comma-separated allowlist of methods (default: all installed)")
    p.add_argument("--predictor_model_name", default=None,
                   help="model name in OpenAI requests (default: --model_name)")
    p.add_argument("--predictor_api_prefix", default="/v1",
                   help="prefix of the predictor's OpenAI routes (/v1 or /openai/v1)")
    p.add_argument("--predictor_api_key", default=None,
                   help="Bearer key for a predictor started with --api_key "
                        "(default: $PREDICTOR_API_KEY)")
    p.add_argument("--predictor_timeout", type=float, default=120.0,
                   help="seconds to wait for one predictor request before answering 504")
    p.add_argument("--predictor_batch_size", type=int, default=64,
                   help="perturbed prompts per predictor request (requests run concurrently)")
    p.add_argument("--max_budget", type=int, default=1024,
                   help="most forward passes one explanation may use")
    p.add_argument("--max_features", type=int, default=1024)
    p.add_argument("--workers", type=int, default=1,
                   help="accepted because KServe may pass it; the explainer runs one worker")
    return p


def build_explainer(args: argparse.Namespace) -> Explainer:
    """Tokenizer, methods and predictor client from parsed arguments."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    allow = [m.strip() for m in args.methods.split(",") if m.strip()] or None
    methods = load_methods(MethodSettings(model_dir=args.model_dir, tokenizer=tokenizer), allow)
    client = PredictorClient(
        url=base_url(args.predictor_host), model=args.predictor_model_name or args.model_name,
        timeout=args.predictor_timeout, chunk_size=args.predictor_batch_size,
        api_prefix=args.predictor_api_prefix.rstrip("/"),
        api_key=args.predictor_api_key or os.environ.get("PREDICTOR_API_KEY") or None,
    )
    limits = Limits(max_budget=args.max_budget, max_features=args.max_features)
    return Explainer(tokenizer, client, methods, limits)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load everything, and serve until SIGTERM."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        logger.warning("ignoring unknown arguments: %s", " ".join(unknown))
    if args.workers != 1:
        logger.warning("--workers=%d ignored: one worker (methods hold models in-process)",
                       args.workers)
    explainer = build_explainer(args)
    logger.info("explaining %s via %s with methods %s", args.model_name, explainer.client.url,
                ", ".join(sorted(explainer.methods)))
    server = kserve.ModelServer(
        http_port=args.http_port, grpc_port=args.http_port + 1, workers=1, enable_grpc=False,
        enable_docs_url=False, enable_latency_logging=True, access_log_format=None,
        event_loop="auto", max_threads=4, max_asyncio_workers=None, timeout_keep_alive=65,
        ssl_certfile=None, ssl_keyfile=None,
        predictor_config=PredictorConfig(predictor_host=args.predictor_host,
                                         predictor_protocol="v1",
                                         predictor_health_check=False),
    )
    server.dataplane = ExplainerDataPlane(server.registered_models, explainer.client)
    _install_routes(kserve_app, explainer)
    server.start([LLMExplainerModel(args.model_name, explainer)])
