"""The engine interface the protocol adapters talk to, and the typed request they share.

Why: every protocol (OpenAI, v2 REST, generate extension, KServe v1, gRPC) is validated once
into the engine's own typed request objects and answered from one engine, so each sampling
parameter has one meaning. In the style of Ray Serve LLM's engine boundary: the interface is
typed on requests, the vLLM implementation sits behind it, and adapters import no vLLM.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from runtime.limits import Limits, Work


@dataclass
class PreparedRequest:
    """B prompts validated once into the engine's typed requests, with what they ask of it.

    ``items`` are the engine's own request objects (for vLLM: its OpenAI ``CompletionRequest``,
    one for the batch, or one ``ChatCompletionRequest`` per prompt when ``chat`` is set), built
    from the protocol's prompts and parameters with the OpenAI completions names and meanings
    (``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop``, ``seed``, ...).
    ``work`` is what the limits and admission read.
    """

    items: list[Any]
    chat: bool
    prompts: int
    work: Work


@dataclass
class Completion:
    """The finished answer to one prompt."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Sum of the sampled tokens' logprobs; only when the request asked for ``logprobs``.
    cumulative_logprob: float | None = None


@dataclass
class Delta:
    """A piece of streamed text for prompt ``index``; the last one carries finish and usage.

    ``tokens`` counts the tokens behind this piece (text held back for stop strings can make a
    piece's text empty while tokens were generated), ``cumulative_logprob`` the logprob sum so
    far (only when ``logprobs`` was asked for): Triton's per-response outputs need both.
    """

    index: int
    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens: int | None = None
    cumulative_logprob: float | None = None


class Engine(abc.ABC):
    """What the protocol adapters need from an inference engine.

    v2, generate and KServe v1 go through ``prepare`` -> ``complete`` / ``stream``; OpenAI
    goes through ``openai_parse`` -> ``openai_work`` -> ``openai_respond``. Either way a
    request is validated once, into typed objects, before the pipeline's limits read it.
    """

    model_name: str

    @abc.abstractmethod
    def prepare(self, prompts: list[str], params: dict[str, Any], *, chat: bool, stream: bool,
                limits: Limits, model: str | None = None) -> PreparedRequest:
        """Validate prompts and sampling parameters into typed requests; ``ClientError`` on
        bad input. A request without ``max_tokens`` gets ``limits.token_cap()``. ``model`` is
        the served name the request was routed to (an alias or a LoRA adapter; None: the
        base model), so that every protocol reaches the same adapter."""

    @abc.abstractmethod
    async def complete(self, request: PreparedRequest) -> list[Completion]:
        """Run every prompt concurrently to the end; raise ``ServingError`` on bad input."""

    @abc.abstractmethod
    async def stream(self, request: PreparedRequest) -> AsyncGenerator[Delta, None]:
        """Submit one prompt and return its text as the engine produces it. Bad input raises
        here, before the iterator exists; an engine failure raises from the iterator."""

    @abc.abstractmethod
    def openai_parse(self, kind: str, body: Any) -> Any:
        """Validate an OpenAI body (``kind``: chat, completion, embedding, tokenize,
        detokenize) into the engine's request object; ``ClientError`` on bad input."""

    @abc.abstractmethod
    def openai_model(self, request: Any) -> str | None:
        """The model a parsed OpenAI request names (None: the default)."""

    @abc.abstractmethod
    def openai_work(self, kind: str, request: Any, limits: Limits) -> Work:
        """What a parsed OpenAI request asks of the engine (applying the token cap)."""

    @abc.abstractmethod
    async def openai_respond(self, kind: str, request: Any, raw_request: Any) -> Response:
        """Answer a parsed OpenAI request (JSON, or server-sent events when streamed)."""

    @abc.abstractmethod
    async def openai_models(self) -> Response:
        """``GET /openai/v1/models``."""

    def version(self) -> dict[str, str]:
        """``GET /version``: the engine's version, as vLLM's server answers it."""
        return {"version": "unknown"}

    # ---- life: the supervisor (runtime.server) owns when these are called ----

    @abc.abstractmethod
    async def start(self) -> None:
        """Build the engine and everything it serves with; return when it can answer."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Shut the engine down (and any process it started)."""

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise if the engine cannot serve (its process died, it errored)."""

    # ---- LoRA adapters (runtime.repository serves them as models) ----

    @property
    def max_lora_rank(self) -> int | None:
        """The highest adapter rank the engine takes; None when it serves no adapters."""
        return None

    def static_adapters(self) -> dict[str, str]:
        """Adapters the engine was started with: name -> folder (after ``start``)."""
        return {}

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a checked adapter folder and serve it under ``name``."""
        raise NotImplementedError("this engine serves no LoRA adapters")

    async def unload_adapter(self, name: str) -> None:
        """Stop serving ``name``; requests already running on it finish."""
        raise NotImplementedError("this engine serves no LoRA adapters")

    @property
    @abc.abstractmethod
    def parameters(self) -> dict[str, str]:
        """Sampling parameters accepted on v2, name -> type description (for model metadata)."""
