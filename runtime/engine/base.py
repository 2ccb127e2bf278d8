"""The engine interface the protocol adapters talk to, and the one internal request type.

Why: every protocol (OpenAI, v2 REST, generate extension, gRPC) is translated into one
``GenerationRequest`` and answered from one engine, so each sampling parameter has one meaning.
In the style of Ray Serve LLM's engine boundary: adapters never see vLLM types.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class GenerationRequest:
    """B prompts with one set of sampling settings.

    ``params`` uses the OpenAI completions names and meanings (``max_tokens``, ``temperature``,
    ``top_p``, ``top_k``, ``stop``, ``seed``, ...); the engine validates them with the same code
    that validates OpenAI requests. With ``chat`` set, each prompt is sent as one user message
    through the model's chat template.
    """

    prompts: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    chat: bool = False
    request_id: str | None = None


@dataclass
class Completion:
    """The finished answer to one prompt."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class Delta:
    """A piece of streamed text for prompt ``index``; the last one carries finish and usage."""

    index: int
    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Engine(abc.ABC):
    """What the protocol adapters need from an inference engine."""

    model_name: str

    @abc.abstractmethod
    async def complete(self, request: GenerationRequest) -> list[Completion]:
        """Run every prompt concurrently to the end; raise ``ServingError`` on bad input."""

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Yield text as the engine produces it (one prompt). Bad input raises before the first
        item; an engine failure raises mid-stream."""

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise if the engine cannot serve (its process died, it errored)."""

    @property
    @abc.abstractmethod
    def parameters(self) -> dict[str, str]:
        """Sampling parameters accepted on v2, name -> type description (for model metadata)."""
