"""Configurable request limits, checked on validated values the same way on every protocol.

Why: vLLM bounds prompts by ``--max-model-len`` but accepts any batch size, ``n`` or number of
stop sequences; one client can then occupy the engine. The limits act on what the engine
adapter read from a request *after* validation (``Work``), so ``"n": "17"`` or ``17.0`` (which
vLLM coerces to 17) is bounded like ``17``. The body size limit lives in the HTTP gate (it must
act before a body is parsed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from runtime.errors import ClientError


class Limits(BaseModel):
    """Per-request bounds; ``None`` means unbounded. Each field is a flag of its own name
    (``max_tokens``: ``--max_tokens_limit``), built by ``runtime.cli``."""

    max_batch_size: int | None = Field(default=256, description="v2 prompts per request")
    max_n: int | None = Field(default=16, description="largest OpenAI n")
    max_tokens: int | None = Field(
        default=None, json_schema_extra={"flag": "max_tokens_limit"},
        description="largest max_tokens a request may ask for (default: the context)")
    max_stop_sequences: int | None = Field(default=32, description="most stop sequences")
    # Entries in each list-valued sampling parameter, which vLLM bounds only by the body size:
    # token ids in each of logit_bias, allowed_token_ids and stop_token_ids (OpenAI accepts
    # up to 300 logit_bias entries), and bad_words (vLLM's VLLM_MAX_NUM_BAD_WORDS, 128, counts
    # the words' token sequences, at least one per word, so more words always fail there).
    max_token_ids: int | None = Field(
        default=1024, description="most entries in each of logit_bias, allowed_token_ids, "
                                  "stop_token_ids")
    max_bad_words: int | None = Field(default=128, description="most bad_words entries")
    # Applied when a client gives no max_tokens (chat then means "up to the context").
    default_max_tokens: int | None = Field(
        default=None, description="max_tokens of a request that gives none (default: "
                                  "--max_tokens_limit when set, else up to the context)")

    def token_cap(self) -> int | None:
        """The max_tokens a request that omits it gets (None: vLLM's own default)."""
        return self.default_max_tokens if self.default_max_tokens is not None else self.max_tokens


@dataclass(frozen=True)
class Work:
    """What one validated request asks of the engine: the numbers the limits bound."""

    prompts: int = 1
    n: int = 1
    max_tokens: int | None = None  # None: not a generation request, or up to the context
    stop_sequences: int = 0

    @property
    def engine_requests(self) -> int:
        """Sequences the engine will run for this request (what admission counts)."""
        return self.prompts * max(self.n, 1)


def check(limits: Limits, work: Work) -> None:
    """Raise ``ClientError`` (naming the flag) when a request exceeds a limit."""
    if limits.max_batch_size is not None and work.prompts > limits.max_batch_size:
        raise ClientError(f"batch of {work.prompts} prompts exceeds the limit of "
                          f"{limits.max_batch_size} (--max_batch_size)")
    if limits.max_n is not None and work.n > limits.max_n:
        raise ClientError(f"n={work.n} exceeds the limit of {limits.max_n} (--max_n)")
    if (limits.max_tokens is not None and work.max_tokens is not None
            and work.max_tokens > limits.max_tokens):
        raise ClientError(f"max_tokens={work.max_tokens} exceeds the limit of "
                          f"{limits.max_tokens} (--max_tokens_limit)")
    if limits.max_stop_sequences is not None and work.stop_sequences > limits.max_stop_sequences:
        raise ClientError(f"{work.stop_sequences} stop sequences exceed the limit of "
                          f"{limits.max_stop_sequences} (--max_stop_sequences)")


TOKEN_ID_LISTS = ("logit_bias", "allowed_token_ids", "stop_token_ids")


def check_lists(limits: Limits, counts: dict[str, int]) -> None:
    """Raise ``ClientError`` (naming the flag) when a list-valued sampling parameter has more
    entries than its cap; ``counts`` maps each parameter to its number of entries."""
    for name, count in counts.items():
        cap, flag = ((limits.max_bad_words, "--max_bad_words") if name == "bad_words"
                     else (limits.max_token_ids, "--max_token_ids"))
        if cap is not None and count > cap:
            raise ClientError(f"{name} has {count} entries; the limit is {cap} ({flag})")


# How deep a client's JSON may nest. OpenAI tool and response schemas nest a few tens of
# levels; Python's JSON decoder and every recursive walk of the value stop near 1000 with a
# RecursionError (a 500), so the bound is checked first and far below that.
MAX_JSON_DEPTH = 128


def load_json(data: str | bytes, where: str = "request body") -> Any:
    """Client JSON as a value, or ``ClientError``: malformed, not UTF-8, nested deeper than
    ``MAX_JSON_DEPTH``, or holding strings that are not valid Unicode. Every route and
    parameter that carries JSON reads it here, so each is refused the same way."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise ClientError(f"the {where} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # includes bytes that are not UTF-8
        raise ClientError(f"malformed JSON in the {where}: {exc}") from None
    check_text(value, where)
    return value


def check_text(value: Any, where: str = "request", _depth: int = 0) -> None:
    """Raise ``ClientError`` for strings that are not valid Unicode text, and for values that
    nest deeper than ``MAX_JSON_DEPTH``.

    JSON may carry unpaired surrogates (``"\\ud800"``); Python decodes them, but the tokenizer
    and the engine's serializer fail on them with a 500. They are the client's error.
    """
    if _depth >= MAX_JSON_DEPTH:
        raise ClientError(f"the {where} nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ClientError(f"{where} holds a string that is not valid Unicode "
                              "(an unpaired surrogate)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, where, _depth + 1)
            check_text(v, where, _depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            check_text(v, where, _depth + 1)
