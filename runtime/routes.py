"""The table of every HTTP route the predictor serves: an explicit allowlist.

Why a table: the pipeline must know, before any route runs, what a path is (health, metrics,
inference, metadata, repository, operator), which protocol answers it and which model it
names, so that authentication, readiness, limits, error shapes and metric labels are decided
in one place. Anything that is not in the table answers 404, whatever a framework or vLLM's
app would otherwise have served (vLLM's app brings elastic scaling, stored responses, its
docs and more; none of them are served unless listed here).

Every route of vLLM's own app is decided (``vllm_decision``: served, operator, or refused with
its reason); tests/runtime/test_route_review.py builds vLLM's app from the installed vLLM with
every router on and fails on a route that is not there, so an upgrade cannot add one unreviewed.
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


# Protocol labels (also the ``protocol`` label of the runtime's metrics). Anthropic's Messages
# API has its own label and its own error shape; Responses, score, rerank, pooling, classify,
# audio and /invocations are vLLM's OpenAI-compatible server's, labelled and shaped "openai".
OPENAI, V2_REST, V2_GENERATE, V2_GRPC, V1_REST = "openai", "v2-rest", "v2-generate", "v2-grpc", \
    "v1-rest"
ANTHROPIC = "anthropic"
PROTOCOLS = (OPENAI, V2_REST, V2_GENERATE, V2_GRPC, V1_REST, ANTHROPIC)

# Endpoints the runtime answers itself through vLLM's request models and serving handlers (path
# after the /openai prefix -> kind name used by the engine adapter). /v1/models under /openai
# is OpenAI's list; unprefixed it is KServe's (vLLM's in `serve` mode).
OPENAI_ENDPOINTS: dict[str, str] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/embeddings": "embedding",
    "/tokenize": "tokenize",  # vLLM's paths for these two have no /v1
    "/detokenize": "detokenize",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
    "/score": "score",
    "/v1/score": "score",
    "/rerank": "rerank",
    "/v1/rerank": "rerank",
    "/v2/rerank": "rerank",
    "/v2/embed": "cohere_embed",
    "/pooling": "pooling",
    "/classify": "classify",
    "/v1/audio/transcriptions": "transcription",
    "/v1/audio/translations": "translation",
    "/invocations": "invocations",
}
# The endpoint kinds whose body is a multipart form (an audio upload), not JSON.
FORM_KINDS = frozenset({"transcription", "translation"})
# The endpoint kinds whose protocol (error shape, metric label) is Anthropic's.
ANTHROPIC_KINDS = frozenset({"messages", "count_tokens"})
# Also served without the /openai prefix, as vLLM serves them.
UNPREFIXED_OPENAI = tuple(OPENAI_ENDPOINTS)
# vLLM's operator and development routes, served (under /openai, by vLLM's own app) only with
# --enable_operator_routes and the operator key; most exist in vLLM's app only where vLLM's own
# switches enable them (VLLM_SERVER_DEV_MODE, a profiler, fault tolerance, ...).
OPERATOR_PATHS = frozenset({
    "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/sleep", "/wake_up", "/is_sleeping",
    "/scale_elastic_ep", "/is_scaling_elastic_ep", "/start_profile", "/stop_profile",
    "/reset_prefix_cache", "/reset_mm_cache", "/reset_encoder_cache",
    "/release_kv_cache_memory", "/collective_rpc", "/server_info", "/pause", "/resume",
    "/is_paused", "/abort_requests", "/init_weight_transfer_engine",
    "/shutdown_weight_transfer_engine", "/start_weight_update", "/start_draft_weight_update",
    "/update_weights", "/finish_weight_update", "/update_weight_version", "/weight_info",
    "/weight_checker", "/get_world_size", "/fault_tolerance/apply", "/fault_tolerance/status",
    "/load", "/kv_event_sources",
})


class Decision(enum.Enum):
    """What the runtime does with one of vLLM's routes."""

    SERVED = "served"  # through the pipeline (key, readiness, model, limits, admission, count)
    OPERATOR = "operator"  # OPERATOR_PATHS: --enable_operator_routes and the operator key
    REFUSED = "refused"  # 404, with the reason below in the message


_STORE_OFF = ("responses are not stored (vLLM's store is off, and the runtime keeps no "
              "response store), so there is none to retrieve or cancel")
_RENDER = ("disaggregated serving's render step (a front end without an engine): this server "
           "renders and generates in one process; /tokenize gives the prompt's tokens")
_TOKENS_API = ("token-in/token-out generation for disaggregated front ends: not reviewed "
               "against the runtime's limits; generate text with the OpenAI or v2 routes")
_ADAPTERS = ("SageMaker's adapter load/unload (vLLM adds it with runtime LoRA updating): "
             "adapters are loaded through the repository extension, "
             "/v2/repository/models/{name}/load, with the operator key")
# Refused routes: reason, in the 404 a client gets. Served and operator routes are the tables
# above (plus the health, metrics and metadata paths classify() answers).
REFUSED_PATHS: dict[str, str] = {
    "/v1/responses/{response_id}": _STORE_OFF,
    "/v1/responses/{response_id}/cancel": _STORE_OFF,
    "/v1/responses/render": _RENDER,
    "/v1/chat/completions/render": _RENDER,
    "/v1/completions/render": _RENDER,
    "/v1/messages/render": _RENDER,
    "/v1/chat/completions/derender": _RENDER,
    "/v1/completions/derender": _RENDER,
    "/inference/v1/generate": _TOKENS_API,
    "/inference/v1/abort_requests": _TOKENS_API,
    "/v1/chat/completions/batch": (
        "many conversations in one request: not reviewed against the runtime's limits (its "
        "batch size and admission count one conversation); send one request per "
        "conversation"),
    "/generative_scoring": ("vLLM's generative scoring (next-token probabilities of given "
                            "items): not reviewed yet; /v1/completions with logprobs gives "
                            "the same numbers"),
    "/v1/systemone": "vLLM's experimental structured-decisions API: not reviewed yet",
    "/cohere/v2/chat": ("Cohere's chat API (vLLM serves it only with VLLM_ENABLE_COHERE_API and "
                        "the cohere SDK): chat is served on /v1/chat/completions"),
    "/v1/realtime": "a websocket API: the runtime serves no websockets",
    "/adapters": _ADAPTERS,
    "/adapters/{adapter_name}": _ADAPTERS,
    "/tokenizer_info": ("vLLM serves it only with --enable-tokenizer-info-endpoint (it exposes "
                        "the chat template); not reviewed"),
    "/docs": "vLLM's API docs describe vLLM's app, not the routes served here",
    "/docs/oauth2-redirect": "vLLM's API docs describe vLLM's app, not the routes served here",
    "/redoc": "vLLM's API docs describe vLLM's app, not the routes served here",
    "/openapi.json": "vLLM's API docs describe vLLM's app, not the routes served here",
}
# vLLM's paths answered by the runtime's own health, metrics and metadata routes.
OWN_PATHS: dict[str, str] = {
    "/health": "health (ready or 503)",
    "/ping": "health (SageMaker's probe: ready or 503)",
    "/metrics": "the runtime's metrics (vLLM's engine series included)",
    "/v1/models": "the model list (OpenAI's under /openai and in `serve` mode)",
    "/version": "vLLM's version",
}


def vllm_decision(path: str) -> tuple[Decision, str]:
    """The decision on one of vLLM's route paths (as vLLM's app spells it, ``{response_id}``
    included), and what serves it or why it is refused; KeyError when it was never decided."""
    if path in OPENAI_ENDPOINTS:
        return Decision.SERVED, f"endpoint {OPENAI_ENDPOINTS[path]}"
    if path in OWN_PATHS:
        return Decision.SERVED, OWN_PATHS[path]
    if path in OPERATOR_PATHS:
        return Decision.OPERATOR, "--enable_operator_routes, the operator key"
    return Decision.REFUSED, REFUSED_PATHS[path]


def protocol_of(endpoint: str) -> str:
    """The protocol (error shape, metric label) of an endpoint kind."""
    return ANTHROPIC if endpoint in ANTHROPIC_KINDS else OPENAI


@dataclass(frozen=True)
class Route:
    """One request's place in the table."""

    kind: Kind
    protocol: str | None = None  # the protocol whose error shape and label apply
    model: str | None = None  # the model named in the path, if any
    endpoint: str | None = None  # OpenAI endpoint kind, or v2 action (infer, generate, ...)
    reason: str | None = None  # why a route of vLLM's is refused (UNKNOWN: in its 404)


_NAME = r"(?P<model>[^/:]+)"
_V2_MODEL = re.compile(rf"^/v2/models/{_NAME}(?P<rest>/ready|/infer|/generate|/generate_stream)?$")
_V2_REPOSITORY = re.compile(rf"^/v2/repository/models/{_NAME}/(load|unload)$")
_V1_MODEL = re.compile(rf"^/v1/models/{_NAME}(?P<rest>:predict)?$")
# The v2 spec's versioned paths: this runtime serves one, unnamed version of each model, so
# /v2/models/m/versions/v/... is served as /v2/models/m/...
_VERSIONED = re.compile(r"^(/v2/models/[^/]+)/versions/[^/]+(/.*)?$")

# /health is vLLM's probe path (KServe's LLMInferenceService probes it): ready or 503.
_HEALTH_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready", "/health", "/ping"})
_SERVER_METADATA = frozenset({"/v2", "/v2/models", "/v1/models", "/v2/repository/index"})
# Refused paths with a parameter ({response_id}, ...), matched when no exact path is.
_REFUSED_TEMPLATES = [(re.compile("^" + re.sub(r"\{[^/}]+\}", "[^/]+", p) + "$"), reason)
                      for p, reason in REFUSED_PATHS.items() if "{" in p]


def _refused(path: str) -> str | None:
    """The reason one of vLLM's routes is refused (path without the /openai prefix)."""
    if path in REFUSED_PATHS:
        return REFUSED_PATHS[path]
    return next((reason for pattern, reason in _REFUSED_TEMPLATES if pattern.match(path)), None)


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
            return Route(Kind.INFERENCE, protocol_of(endpoint), endpoint=endpoint)
        if sub == "/version":
            return Route(Kind.METADATA, OPENAI, endpoint="version")
        if operator_routes and sub in OPERATOR_PATHS:
            return Route(Kind.OPERATOR, OPENAI, endpoint="operator")
        return Route(Kind.UNKNOWN, OPENAI, reason=_refused(sub))
    if path in UNPREFIXED_OPENAI:
        endpoint = OPENAI_ENDPOINTS[path]
        return Route(Kind.INFERENCE, protocol_of(endpoint), endpoint=endpoint)
    if path == "/version":
        return Route(Kind.METADATA, OPENAI, endpoint="version")
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
    reason = _refused(path)
    if path.startswith("/v1/"):
        openai_like = path.startswith(("/v1/chat", "/v1/responses", "/v1/completions",
                                       "/v1/messages"))
        return Route(Kind.UNKNOWN, (ANTHROPIC if path.startswith("/v1/messages") else OPENAI)
                     if openai_like else V1_REST, reason=reason)
    return Route(Kind.UNKNOWN, V2_REST, reason=reason)
