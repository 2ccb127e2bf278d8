"""The KServe side: a ``kserve.Model`` whose ``explain()`` answers ``:explain``, readiness that
follows the predictor, error rendering, and ``ModelServer`` start-up.

Why this shape: KServe sends an explainer exactly ``POST /v1/models/{name}:explain``, with the
arguments ``--model_name``, ``--predictor_host`` and ``--http_port``. The model itself is
ready once the tokenizer and methods are loaded, but the explainer is useless without its
predictor, so readiness (``/v1/models/{name}`` and ``/v2/health/ready``) probes the predictor.
The ``:explain`` route itself skips that check (KServe passes
``disable_predictor_health_check``) so a request made while the predictor is down gets a 502
with the reason instead of a bare 503. Liveness (``/`` and ``/v2/health/live``) never asks the
predictor, so a predictor outage makes the explainer unready, not restarted. ``:predict`` is
passed to the predictor with the explainer's own predictor key, never the caller's
``Authorization``. This is the only module that imports ``kserve``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

import kserve
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kserve.errors import InvalidInput, ModelNotFound
from kserve.model_server import app as kserve_app
from kserve.predictor_config import PredictorConfig
from kserve.protocol.dataplane import DataPlane

from explainers.auth import BearerGate
from explainers.errors import ClientError, ExplainerError
from explainers.explainer import Explainer, Limits
from explainers.gate import DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_REQUEST_BYTES, RequestGate
from explainers.methods.base import DEFAULT_IG_BATCH_TOKENS, MethodSettings
from explainers.methods.registry import load_methods
from explainers.predictor import PredictorClient, base_url
from runtime.auth import ApiKey, ApiKeyError

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

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        # KServe's default forwards the caller's Authorization (the explainer's key) to the
        # predictor; this sends the explainer's predictor key and the tracing headers only.
        if not isinstance(payload, dict):
            raise ClientError("the explainer passes on only KServe v1 ':predict' JSON bodies")
        return await self.explainer.client.predict(payload, headers)


class ExplainerDataPlane(DataPlane):
    """KServe's data plane with readiness that includes the predictor's."""

    def __init__(self, model_registry: Any, client: PredictorClient) -> None:
        super().__init__(model_registry=model_registry)
        self.predictor_client = client

    async def ready(self) -> bool:
        return await self.predictor_client.is_ready()

    def decode(self, body: Any, headers: Any, *args: Any, **kwargs: Any) -> Any:
        # KServe parses the body before explain(); its parse error becomes the explainer's
        # error shape ({"error", "type"}) like every other 400 of this process
        try:
            return super().decode(body, headers, *args, **kwargs)
        except InvalidInput as exc:
            raise ClientError(f"the request body is not JSON: {exc.reason}") from exc

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


def _install_routes(app: FastAPI, explainer: Explainer, api_key: ApiKey,
                    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS) -> None:
    app.add_exception_handler(ExplainerError, _explainer_error_handler)
    # the last added runs first: the key, then the concurrency and body caps, then KServe
    app.add_middleware(RequestGate, max_request_bytes=max_request_bytes,
                       max_concurrent_requests=max_concurrent_requests)
    app.add_middleware(BearerGate, api_key=api_key)

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
    p.add_argument("--api_key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but health "
                        "(default: $API_KEY)")
    p.add_argument("--api_key_file", default=None,
                   help="file holding the key (a mounted Secret; re-read when it changes)")
    p.add_argument("--predictor_model_name", default=None,
                   help="model name in OpenAI requests (default: --model_name)")
    p.add_argument("--predictor_api_prefix", default="/v1",
                   help="prefix of the predictor's OpenAI routes (/v1 or /openai/v1)")
    p.add_argument("--predictor_api_key", default=None,
                   help="Bearer key for a predictor started with --api_key "
                        "(default: $PREDICTOR_API_KEY)")
    p.add_argument("--predictor_api_key_file", default=None,
                   help="file holding the predictor's key (re-read when it changes)")
    p.add_argument("--predictor_timeout", type=float, default=120.0,
                   help="seconds to wait for one predictor request before answering 504")
    p.add_argument("--predictor_batch_size", type=int, default=64,
                   help="perturbed prompts per predictor request (requests run concurrently)")
    p.add_argument("--max_budget", type=int, default=1024,
                   help="most forward passes one explanation may use (baseline, method and "
                        "deletion test)")
    p.add_argument("--max_features", type=int, default=1024,
                   help="most features one explanation may have")
    p.add_argument("--max_prompt_tokens", type=int, default=2048,
                   help="most tokens of the rendered prompt plus the response, checked before "
                        "any feature is built")
    p.add_argument("--max_instances", type=int, default=8,
                   help="most explain requests in one body's 'instances'")
    p.add_argument("--max_request_budget", type=int, default=None,
                   help="most forward passes of all the explanations of one request body "
                        "together, checked before any predictor call (default: --max_budget)")
    p.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help="largest accepted request body; larger gets 413 before it is read")
    p.add_argument("--max_concurrent_requests", type=int,
                   default=DEFAULT_MAX_CONCURRENT_REQUESTS,
                   help="requests with a body served at once (explain, predict); one more "
                        "gets 429 with Retry-After")
    p.add_argument("--ig_batch_tokens", type=int, default=DEFAULT_IG_BATCH_TOKENS,
                   help="integrated gradients: most tokens (steps x sequence) in one "
                        "forward/backward pass; bounds its memory (~1.1-1.4 MiB per token)")
    p.add_argument("--workers", type=int, default=1,
                   help="accepted because KServe may pass it; the explainer runs one worker")
    return p


class StartupError(Exception):
    """A start-up problem the operator can fix: reported as one line, exit code 2."""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _load_tokenizer(model_dir: str) -> Any:
    if not os.path.isdir(model_dir):
        raise StartupError(f"--model_dir {model_dir} is not a directory")
    if not any(os.path.isfile(os.path.join(model_dir, f)) for f in TOKENIZER_FILES):
        raise StartupError(f"--model_dir {model_dir} holds no tokenizer (none of "
                           f"{', '.join(TOKENIZER_FILES)}): give the model folder the "
                           f"predictor serves")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise StartupError(f"cannot load the tokenizer in --model_dir {model_dir}: "
                           f"{reason}") from None


def _api_key(flag: str | None, file: str | None, name: str, env_var: str) -> ApiKey:
    """``--{name}``, else ``--{name}_file``, else ``$env_var``; errors never show the key."""
    try:
        return ApiKey.from_sources(flag, file, env_var=env_var, name=name)
    except ApiKeyError as exc:  # a message without the flag is about the file's content
        message = str(exc)
        raise StartupError(message if message.startswith(("--", "$"))
                           else f"--{name}_file: {message}") from None


def build_explainer(args: argparse.Namespace) -> tuple[Explainer, ApiKey]:
    """Tokenizer, methods, predictor client and the explainer's own key from parsed
    arguments; ``StartupError`` for anything the operator must fix."""
    for name in ("max_budget", "max_features", "max_prompt_tokens", "max_instances",
                 "ig_batch_tokens", "predictor_batch_size", "max_request_budget",
                 "max_request_bytes", "max_concurrent_requests"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise StartupError(f"--{name} must be at least 1")
    api_key = _api_key(args.api_key, args.api_key_file, "api_key", "API_KEY")
    predictor_key = _api_key(args.predictor_api_key, args.predictor_api_key_file,
                             "predictor_api_key", "PREDICTOR_API_KEY")
    try:
        url = base_url(args.predictor_host)
    except ValueError as exc:
        raise StartupError(f"--predictor_host: {exc}") from None
    tokenizer = _load_tokenizer(args.model_dir)
    allow = [m.strip() for m in args.methods.split(",") if m.strip()] or None
    settings = MethodSettings(model_dir=args.model_dir, tokenizer=tokenizer,
                              ig_batch_tokens=args.ig_batch_tokens)
    try:
        methods = load_methods(settings, allow)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    client = PredictorClient(
        url=url, model=args.predictor_model_name or args.model_name,
        timeout=args.predictor_timeout, chunk_size=args.predictor_batch_size,
        api_prefix=args.predictor_api_prefix.rstrip("/"), api_key=predictor_key,
    )
    limits = Limits(max_budget=args.max_budget, max_features=args.max_features,
                    max_prompt_tokens=args.max_prompt_tokens, max_instances=args.max_instances,
                    max_request_budget=args.max_request_budget)
    return Explainer(tokenizer, client, methods, limits), api_key


def _option_names(unknown: list[str]) -> str:
    """Unknown arguments without their values (a value may be a secret)."""
    return " ".join(a.split("=", 1)[0] for a in unknown if a.startswith("-")) or "(values)"


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load everything, and serve until SIGTERM.

    A start-up problem the operator can fix (no tokenizer in ``--model_dir``, an unreadable
    key file, an unknown method) ends the process with one line on stderr and exit code 2,
    not a traceback.
    """
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        logger.warning("ignoring unknown arguments: %s", _option_names(unknown))
    if args.workers != 1:
        logger.warning("--workers=%d ignored: one worker (methods hold models in-process)",
                       args.workers)
    try:
        explainer, api_key = build_explainer(args)
    except StartupError as exc:
        print(f"python -m explainers: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    logger.info("explaining %s via %s with methods %s; API key %s", args.model_name,
                explainer.client.url, ", ".join(sorted(explainer.methods)),
                "required" if api_key.enabled else "not required")
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
    _install_routes(kserve_app, explainer, api_key, args.max_request_bytes,
                    args.max_concurrent_requests)
    server.start([LLMExplainerModel(args.model_name, explainer)])
