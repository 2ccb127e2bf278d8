"""A small fake engine for the fast unit tier: the runtime's pipeline, codecs, routes and error
rendering exercised without vLLM.

Why a fake here and never elsewhere: it proves that the runtime's own logic (routing, keys,
limits, admission, error shapes, counting) behaves, in milliseconds. Whether a feature works
is proven only against the real ``python -m runtime`` with the real model (the slow tier).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from starlette.responses import JSONResponse, Response

from runtime.engine.base import Completion, Delta, Engine, PreparedRequest
from runtime.errors import ClientError
from runtime.limits import Limits, Work

ACCEPTED = {"max_tokens", "temperature", "stop", "n", "seed"}


def _int(params: dict[str, Any], key: str, default: int | None) -> int | None:
    value = params.get(key, default)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ClientError(f"{key}: Input should be a valid integer") from None
    if number != int(number):
        raise ClientError(f"{key}: Input should be a valid integer")
    return int(number)


class FakeEngine(Engine):
    """Answers every prompt with its words reversed; ``delay`` seconds per piece."""

    def __init__(self, model_name: str = "smollm2", delay: float = 0.0,
                 max_lora_rank: int | None = None) -> None:
        self.model_name = model_name
        self.delay = delay
        self.submitted: list[PreparedRequest] = []
        self._max_lora_rank = max_lora_rank
        self.loaded: dict[str, str] = {}  # LoRA adapters: name -> folder

    @property
    def max_lora_rank(self) -> int | None:
        return self._max_lora_rank

    def static_adapters(self) -> dict[str, str]:
        return dict(self.loaded)

    async def load_adapter(self, name: str, path: str) -> None:
        self.loaded[name] = path

    async def unload_adapter(self, name: str) -> None:
        self.loaded.pop(name, None)

    def prepare(self, prompts: list[str], params: dict[str, Any], *, chat: bool, stream: bool,
                limits: Limits, model: str | None = None) -> PreparedRequest:
        unknown = sorted(set(params) - ACCEPTED)
        if unknown:
            raise ClientError(f"unknown parameter(s) {', '.join(unknown)}")
        max_tokens = _int(params, "max_tokens", None if chat else 16)
        if max_tokens is None:
            max_tokens = limits.token_cap()
        stop = params.get("stop")
        stops = 1 if isinstance(stop, str) else len(stop) if isinstance(stop, list) else 0
        work = Work(len(prompts), _int(params, "n", 1) or 1, max_tokens, stops)
        return PreparedRequest([dict(params, prompt=p) for p in prompts], chat, len(prompts),
                               work)

    @staticmethod
    def answer(prompt: str) -> str:
        return " ".join(reversed(prompt.split()))

    async def complete(self, request: PreparedRequest) -> list[Completion]:
        self.submitted.append(request)
        await asyncio.sleep(self.delay)
        return [Completion(self.answer(i["prompt"]), "stop", len(i["prompt"].split()),
                           len(i["prompt"].split())) for i in request.items]

    async def stream(self, request: PreparedRequest) -> AsyncGenerator[Delta, None]:
        if request.prompts != 1:
            raise ClientError("streaming takes exactly one prompt")
        self.submitted.append(request)
        words = self.answer(request.items[0]["prompt"]).split()

        async def pieces() -> AsyncGenerator[Delta, None]:
            for word in words:
                await asyncio.sleep(self.delay)
                yield Delta(0, word + " ")
            yield Delta(0, "", "stop", len(words), len(words))

        return pieces()

    def openai_parse(self, kind: str, body: Any) -> Any:
        if not isinstance(body, dict):
            raise ClientError("request body must be a JSON object")
        if kind == "chat" and not isinstance(body.get("messages"), list):
            raise ClientError("messages: Field required")
        return dict(body)

    def openai_model(self, request: Any) -> str | None:
        return request.get("model")

    def openai_work(self, kind: str, request: Any, limits: Limits) -> Work:
        if kind == "responses":  # as the vLLM adapter: the token cap, when none is given
            if request.get("max_output_tokens") is None:
                request["max_output_tokens"] = limits.token_cap()
            return Work(1, 1, _int(request, "max_output_tokens", None), 0)
        if kind == "messages":
            return Work(1, 1, _int(request, "max_tokens", None), 0)
        if kind == "rerank":
            documents = request.get("documents")
            return Work(len(documents) if isinstance(documents, list) else 1)
        if kind not in ("chat", "completion"):
            return Work()
        if request.get("max_tokens") is None and kind == "chat":
            request["max_tokens"] = limits.token_cap()
        prompt = request.get("prompt")
        prompts = len(prompt) if isinstance(prompt, list) else 1
        return Work(prompts, _int(request, "n", 1) or 1, _int(request, "max_tokens", 16), 0)

    async def openai_respond(self, kind: str, request: Any, raw_request: Any) -> Response:
        self.submitted.append(request)
        return JSONResponse({"object": kind, "model": request.get("model"),
                             "max_tokens": request.get("max_tokens")})

    async def openai_models(self) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.model_name}]})

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def check_health(self) -> None:
        return None

    @property
    def parameters(self) -> dict[str, str]:
        return dict.fromkeys(ACCEPTED, "fake")
