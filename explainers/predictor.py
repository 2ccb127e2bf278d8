"""The explainer's client for the predictor's OpenAI completions API.

Why: black-box methods need one number per perturbed prompt, the log-probability of the
response under it. vLLM returns it as ``prompt_logprobs`` of a completion request whose prompt
is the perturbed prompt followed by the response tokens. All perturbations of one explanation
go out as lists of token-id prompts (``chunk_size`` per request, the requests concurrently), so
vLLM's continuous batching scores them together instead of one request after another.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from explainers.errors import ClientError, PredictorError, PredictorTimeout, PredictorUnreachable
from runtime.auth import ApiKey

logger = logging.getLogger("explainers")

# Headers of the caller passed on to the predictor by ``:predict``: tracing only. Never the
# caller's Authorization (the explainer's own key for the predictor goes instead).
TRACE_HEADERS = ("x-request-id", "x-b3-traceid")

# Tried in order; the first one that exists (not 404) decides readiness. The project's runtime
# answers /v2/health/ready (engine state); plain vLLM answers /health.
HEALTH_PATHS = ("/v2/health/ready", "/health")


def base_url(predictor_host: str) -> str:
    """``HOST[:PORT]`` (what the KServe controller passes) or a full URL, as a base URL."""
    host = predictor_host.strip().rstrip("/")
    if not host:
        raise ValueError("predictor host is empty")
    return host if "://" in host else f"http://{host}"


@dataclass
class ScoreStats:
    """What an explanation cost on the predictor."""

    forward_passes: int = 0
    tokens_scored: int = 0
    requests: int = 0

    def to_json(self) -> dict[str, int]:
        return {"forward_passes": self.forward_passes, "tokens_scored": self.tokens_scored,
                "predictor_requests": self.requests}


@dataclass
class PredictorClient:
    """Async HTTP client for one predictor: scoring, generation, and readiness probes.

    ``api_key`` is the predictor's key (``--predictor_api_key[_file]``), kept as an ``ApiKey``
    (its repr hides the key) and read on every request, so a rotated key file takes effect
    without a restart. A plain string is accepted and wrapped.
    """

    url: str
    model: str
    timeout: float = 120.0
    chunk_size: int = 64
    api_prefix: str = "/v1"
    api_key: ApiKey = field(default_factory=ApiKey, repr=False)
    _client: httpx.AsyncClient | None = field(default=None, repr=False)
    _ready_cache: tuple[float, bool] = (0.0, False)

    def __post_init__(self) -> None:
        if not isinstance(self.api_key, ApiKey):
            self.api_key = ApiKey(value=self.api_key or None)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.url,
                timeout=httpx.Timeout(self.timeout, connect=10.0),
                limits=httpx.Limits(max_connections=32),
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def is_ready(self, cache_seconds: float = 1.0) -> bool:
        """Whether the predictor answers its readiness route (cached briefly for probes)."""
        checked_at, ok = self._ready_cache
        if time.monotonic() - checked_at < cache_seconds:
            return ok
        ok = False
        for path in HEALTH_PATHS:
            try:
                r = await self.client.get(path, timeout=3.0, headers=self.api_key.header())
            except httpx.HTTPError:
                break
            if r.status_code != 404:
                ok = r.status_code == 200
                break
        self._ready_cache = (time.monotonic(), ok)
        return ok

    async def generate(self, prompt_ids: list[int], max_tokens: int) -> str:
        """The predictor's greedy (temperature 0) answer to a prompt, as text."""
        body = {"model": self.model, "prompt": prompt_ids, "max_tokens": max_tokens,
                "temperature": 0}
        data = await self._post(body)
        return data["choices"][0]["text"]

    async def score(self, prompts: list[list[int]], response: list[int],
                    stats: ScoreStats) -> list[list[float]]:
        """Per response token log-probabilities of ``response`` after each prompt.

        One entry per prompt, each of ``len(response)`` floats, in the order of ``prompts``.
        """
        if not prompts:
            return []
        chunks = [prompts[i:i + self.chunk_size] for i in range(0, len(prompts), self.chunk_size)]
        results = await asyncio.gather(*(self._score_chunk(c, response) for c in chunks))
        stats.forward_passes += len(prompts)
        stats.tokens_scored += sum(len(p) + len(response) for p in prompts)
        stats.requests += len(chunks)
        return [row for chunk in results for row in chunk]

    async def _score_chunk(self, prompts: list[list[int]],
                           response: list[int]) -> list[list[float]]:
        n = len(response)
        body = {"model": self.model, "prompt": [p + response for p in prompts], "max_tokens": 1,
                "temperature": 0, "prompt_logprobs": 0}
        data = await self._post(body)
        choices = sorted(data.get("choices", []), key=lambda c: c["index"])
        if len(choices) != len(prompts):
            raise PredictorError(
                f"predictor returned {len(choices)} choices for {len(prompts)} prompts"
            )
        rows = []
        for choice in choices:
            plp = choice.get("prompt_logprobs")
            if not plp or len(plp) < n + 1:
                raise PredictorError("predictor returned no prompt_logprobs; the explainer "
                                     "needs a vLLM-based predictor")
            row = []
            for entry, tok in zip(plp[-n:], response, strict=True):
                item = entry.get(str(tok)) if entry else None
                if item is None:
                    raise PredictorError("prompt_logprobs lack the response token's entry")
                row.append(float(item["logprob"]))
            rows.append(row)
        return rows

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._request(f"{self.api_prefix}/completions", body)

    async def predict(self, body: Any, headers: dict[str, str] | None = None) -> Any:
        """KServe v1 ``:predict`` on the predictor, with the explainer's predictor key (never
        the caller's ``Authorization``) and only the caller's tracing headers."""
        trace = {k: v for k, v in (headers or {}).items() if k.lower() in TRACE_HEADERS}
        return await self._request(f"/v1/models/{self.model}:predict", body, trace)

    async def _request(self, path: str, body: Any,
                       headers: dict[str, str] | None = None) -> Any:
        """POST ``body`` to ``path``; errors for the client name the route, never the
        predictor's address (logged instead, for the operator)."""
        try:
            r = await self.client.post(path, json=body,
                                       headers={**(headers or {}), **self.api_key.header()})
        except httpx.TimeoutException as exc:
            logger.warning("predictor %s%s: no answer within %g s (%s)", self.url, path,
                           self.timeout, type(exc).__name__)
            raise PredictorTimeout(
                f"the predictor did not answer within {self.timeout:g} s "
                f"({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            logger.warning("predictor %s%s unreachable: %s: %s", self.url, path,
                           type(exc).__name__, exc)
            raise PredictorUnreachable(
                f"cannot reach the predictor: {type(exc).__name__}"
            ) from exc
        if r.status_code == 400:
            raise ClientError(f"the predictor refused the request: {_error_text(r)}")
        if r.status_code in (401, 403):
            given = "a key that it refused" if self.api_key.enabled else "no key"
            raise PredictorError(
                f"the predictor answered {r.status_code} on {path}: the explainer sent {given}; "
                f"set --predictor_api_key, --predictor_api_key_file or $PREDICTOR_API_KEY "
                f"({_error_text(r)})"
            )
        if r.status_code != 200:
            logger.warning("predictor %s%s answered %d", self.url, path, r.status_code)
            raise PredictorError(
                f"the predictor answered {r.status_code} on {path}: {_error_text(r)}"
            )
        return r.json()


def _error_text(r: httpx.Response) -> str:
    try:
        data = r.json()
    except ValueError:
        return r.text[:500]
    if isinstance(data, dict):
        err = data.get("error", data.get("message", data))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:500]
    return str(data)[:500]
