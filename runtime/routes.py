"""The table of every HTTP route the predictor serves: an explicit allowlist.

Why a table: the pipeline must know, before any route runs, what a path is (health, metrics,
inference, metadata, repository, operator), which protocol answers it and which model it
names, so that authentication, readiness, limits, error shapes and metric labels are decided
in one place. Anything that is not in the table answers 404, whatever a framework or vLLM's
app would otherwise have served (vLLM's app brings elastic scaling, stored responses, its
docs and more; none of them are served unless listed here).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Kind(enum.Enum):
    """What a route is, which decides what the pipeline does with it."""

    HEALTH = "health"  # probes: no key, answered in every state
    METRICS = "metrics"  # Prometheus: no key unless --protect_metrics
    INFERENCE = "inference"  # reaches the engine: key, readiness, admission, counted
    METADATA = "metadata"  # describes the server or a model: key
    REPOSITORY = "repository"  # the repository extension's load/unload: the operator key
    OPERATOR = "operator"  # vLLM's operator routes: --enable_operator_routes, the operator key
    UNKNOWN = "unknown"  # everything else: 404


# Protocol labels (also the ``protocol`` label of the runtime's metrics).
OPENAI, V2_REST, V2_GENERATE, V2_GRPC, V1_REST = "openai", "v2-rest", "v2-generate", "v2-grpc", \
    "v1-rest"
PROTOCOLS = (OPENAI, V2_REST, V2_GENERATE, V2_GRPC, V1_REST)

# OpenAI endpoints the runtime answers itself (path after the /openai prefix -> kind name used
# by the engine adapter). /v1/models under /openai is OpenAI's list; unprefixed it is KServe's.
OPENAI_ENDPOINTS: dict[str, str] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/embeddings": "embedding",
    "/tokenize": "tokenize",  # vLLM's paths for these two have no /v1
    "/detokenize": "detokenize",
}
UNPREFIXED_OPENAI = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
# vLLM's operator routes, served (under /openai) only with --enable_operator_routes.
OPERATOR_PATHS = frozenset({
    "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/sleep", "/wake_up", "/is_sleeping",
    "/scale_elastic_ep", "/is_scaling_elastic_ep", "/start_profile", "/stop_profile",
    "/reset_prefix_cache",
})


@dataclass(frozen=True)
class Route:
    """One request's place in the table."""

    kind: Kind
    protocol: str | None = None  # the protocol whose error shape and label apply
    model: str | None = None  # the model named in the path, if any
    endpoint: str | None = None  # OpenAI endpoint kind, or v2 action (infer, generate, ...)


_NAME = r"(?P<model>[^/:]+)"
_V2_MODEL = re.compile(rf"^/v2/models/{_NAME}(?P<rest>/ready|/infer|/generate|/generate_stream)?$")
_V2_REPOSITORY = re.compile(rf"^/v2/repository/models/{_NAME}/(load|unload)$")
_V1_MODEL = re.compile(rf"^/v1/models/{_NAME}(?P<rest>:predict)?$")
# The v2 spec's versioned paths: this runtime serves one, unnamed version of each model, so
# /v2/models/m/versions/v/... is served as /v2/models/m/...
_VERSIONED = re.compile(r"^(/v2/models/[^/]+)/versions/[^/]+(/.*)?$")

# /health is vLLM's probe path (KServe's LLMInferenceService probes it): ready or 503.
_HEALTH_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready", "/health"})
_SERVER_METADATA = frozenset({"/v2", "/v2/models", "/v1/models", "/v2/repository/index"})


def unversioned(path: str) -> str:
    """``/v2/models/m/versions/v/infer`` -> ``/v2/models/m/infer``; other paths unchanged."""
    match = _VERSIONED.match(path)
    return match.group(1) + (match.group(2) or "") if match else path


def classify(path: str, *, operator_routes: bool = False, vllm_serve: bool = False) -> Route:
    """Where ``path`` (already unversioned) sits in the table. ``vllm_serve``: started as
    ``python -m runtime serve``, where ``/v1/models`` is OpenAI's list (as ``vllm serve``'s)
    rather than KServe's v1 list."""
    if vllm_serve and path == "/v1/models":
        return Route(Kind.METADATA, OPENAI, endpoint="models")
    if path in _HEALTH_PATHS:
        return Route(Kind.HEALTH, V2_REST)
    if path == "/metrics":
        return Route(Kind.METRICS)
    if path in _SERVER_METADATA:
        return Route(Kind.METADATA, V1_REST if path == "/v1/models" else V2_REST)
    if path.startswith("/openai/"):
        sub = path[len("/openai"):]
        if sub == "/v1/models":
            return Route(Kind.METADATA, OPENAI, endpoint="models")
        endpoint = OPENAI_ENDPOINTS.get(sub)
        if endpoint is not None:
            return Route(Kind.INFERENCE, OPENAI, endpoint=endpoint)
        if operator_routes and sub in OPERATOR_PATHS:
            return Route(Kind.OPERATOR, OPENAI, endpoint="operator")
        return Route(Kind.UNKNOWN, OPENAI)
    if path in UNPREFIXED_OPENAI:
        return Route(Kind.INFERENCE, OPENAI, endpoint=OPENAI_ENDPOINTS[path])
    match = _V2_MODEL.match(path)
    if match:
        rest = (match.group("rest") or "").lstrip("/")
        model = match.group("model")
        if rest == "ready":
            return Route(Kind.HEALTH, V2_REST, model)
        if rest in ("generate", "generate_stream"):
            return Route(Kind.INFERENCE, V2_GENERATE, model, rest)
        if rest == "infer":
            return Route(Kind.INFERENCE, V2_REST, model, rest)
        return Route(Kind.METADATA, V2_REST, model)
    match = _V2_REPOSITORY.match(path)
    if match:
        return Route(Kind.REPOSITORY, V2_REST, match.group("model"))
    match = _V1_MODEL.match(path)
    if match:
        if match.group("rest"):
            return Route(Kind.INFERENCE, V1_REST, match.group("model"), "predict")
        return Route(Kind.HEALTH, V1_REST, match.group("model"))
    if path.startswith("/v1/"):
        return Route(Kind.UNKNOWN, OPENAI if path.startswith("/v1/chat") else V1_REST)
    return Route(Kind.UNKNOWN, V2_REST)
