"""The runtime's own Prometheus series, in one place.

Why: vLLM's engine series (``vllm:*``) say what the engine did, not which protocol asked for it;
KServe's huggingfaceserver reports no per-protocol token metrics (kserve#3983). These series are
labelled by model and protocol (openai, v2-rest, v2-generate, v2-grpc, v1-rest); the model
label takes only served names, LoRA adapters included (``runtime.pipeline`` maps anything else
to one fixed value; an unloaded adapter's series are dropped). They live in
prometheus-client's default registry, which KServe's ``/metrics`` route already serves next to
vLLM's.

The protocol and model label of the request being served travel in context variables: the
pipeline sets them when it admits the request, the instrumented engine client reads them when
it records token timings.
"""

from __future__ import annotations

import contextvars

from prometheus_client import Counter, Histogram

current_protocol: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_protocol", default="openai"
)
# The served name the request was counted under (an alias, an adapter, or "_other"): the
# token and timing series use it too, so that one request's series share one model label.
current_model: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_model", default=None
)

REQUESTS = Counter(
    "kserve_llm_requests",
    "Inference requests answered, by protocol and outcome (success, client_error, rejected, "
    "server_error, aborted).",
    ["model", "protocol", "outcome"],
)
TTFT = Histogram(
    "kserve_llm_time_to_first_token_seconds",
    "Time from engine submission to the first generated token.",
    ["model", "protocol"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80),
)
TPOT = Histogram(
    "kserve_llm_time_per_output_token_seconds",
    "Mean time between generated tokens after the first, per engine request.",
    ["model", "protocol"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5),
)
PROMPT_TOKENS = Counter(
    "kserve_llm_prompt_tokens", "Prompt tokens processed.", ["model", "protocol"]
)
GENERATION_TOKENS = Counter(
    "kserve_llm_generation_tokens", "Tokens generated.", ["model", "protocol"]
)


# Models whose series were dropped (unloaded adapters) and not served again: a request that
# was in flight across the unload must not re-create them; it is recorded under "_other".
_forgotten: set[str] = set()
OTHER = "_other"  # the label of any name that is not served (runtime.pipeline)


def _served(model: str) -> str:
    return OTHER if model in _forgotten else model


def count_request(model: str, protocol: str, outcome: str) -> None:
    """Record one answered request."""
    REQUESTS.labels(_served(model), protocol, outcome).inc()


def record_engine_request(
    model: str,
    protocol: str,
    *,
    prompt_tokens: int,
    generation_tokens: int,
    ttft: float | None,
    tpot: float | None,
) -> None:
    """Record one finished (or aborted) engine request's token counts and timings."""
    model = _served(model)
    PROMPT_TOKENS.labels(model, protocol).inc(prompt_tokens)
    GENERATION_TOKENS.labels(model, protocol).inc(generation_tokens)
    if ttft is not None:
        TTFT.labels(model, protocol).observe(ttft)
    if tpot is not None:
        TPOT.labels(model, protocol).observe(tpot)


def forget_model(model: str) -> None:
    """Drop every series of ``model`` (an unloaded LoRA adapter), so that the model label stays
    bounded by the models served now, however many adapters come and go. Requests still in
    flight on it are recorded under ``_other`` when they end (until it is served again)."""
    _forgotten.add(model)
    for metric in (REQUESTS, TTFT, TPOT, PROMPT_TOKENS, GENERATION_TOKENS):
        for labels in [k for k in list(metric._metrics) if k[0] == model]:
            metric.remove(*labels)


def serve_model(model: str) -> None:
    """``model`` is served (again): its requests are recorded under its own name."""
    _forgotten.discard(model)
