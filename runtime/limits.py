"""Configurable request limits, checked the same way on every protocol.

Why: vLLM bounds prompts by ``--max-model-len`` but accepts any batch size, ``n`` or number of
stop sequences; one client can then occupy the engine. These limits give a clear 400 instead.
The body size limit lives in the HTTP middleware (it must act before a body is parsed).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from runtime.errors import ClientError


class Limits(BaseModel):
    """Per-request bounds; ``None`` means unbounded."""

    max_batch_size: int | None = 256
    max_n: int | None = 16
    max_tokens: int | None = None
    max_stop_sequences: int | None = 32


def check(limits: Limits, params: dict[str, Any], prompts: int) -> None:
    """Raise ``ClientError`` when a request exceeds a limit. Values of the wrong type are left
    to the engine's own validation, which reports them precisely."""
    if limits.max_batch_size is not None and prompts > limits.max_batch_size:
        raise ClientError(f"batch of {prompts} prompts exceeds the limit of "
                          f"{limits.max_batch_size} (--max_batch_size)")
    n = params.get("n")
    if limits.max_n is not None and isinstance(n, int) and n > limits.max_n:
        raise ClientError(f"n={n} exceeds the limit of {limits.max_n} (--max_n)")
    for key in ("max_tokens", "max_completion_tokens"):
        value = params.get(key)
        if limits.max_tokens is not None and isinstance(value, int) and value > limits.max_tokens:
            raise ClientError(f"{key}={value} exceeds the limit of {limits.max_tokens} "
                              "(--max_tokens_limit)")
    stop = params.get("stop")
    count = 1 if isinstance(stop, str) else len(stop) if isinstance(stop, list) else 0
    if limits.max_stop_sequences is not None and count > limits.max_stop_sequences:
        raise ClientError(f"{count} stop sequences exceed the limit of "
                          f"{limits.max_stop_sequences} (--max_stop_sequences)")


def check_text(value: Any, where: str = "request") -> None:
    """Raise ``ClientError`` for strings that are not valid Unicode text.

    JSON may carry unpaired surrogates (``"\\ud800"``); Python decodes them, but the tokenizer
    and the engine's serializer fail on them with a 500. They are the client's error.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ClientError(f"{where} holds a string that is not valid Unicode "
                              "(an unpaired surrogate)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, where)
            check_text(v, where)
    elif isinstance(value, list | tuple):
        for v in value:
            check_text(v, where)


def openai_work(body: Any) -> tuple[dict[str, Any], int, int]:
    """(parameters, prompts, n) of an OpenAI completions/chat/embeddings body."""
    if not isinstance(body, dict):
        return {}, 1, 1
    prompt = body.get("prompt", body.get("input"))
    prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(
        prompt[0], int) else 1
    n = body.get("n")
    return body, prompts, n if isinstance(n, int) and n > 0 else 1
