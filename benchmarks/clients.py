"""One request per API, timed the way vLLM's harness times it.

Why one small coroutine per API: each protocol frames its stream differently (OpenAI SSE
chunks with ``choices``, the generate extension's ``text_output`` events, a single v2 infer
response), but they all fill the same :class:`RequestRecord`: start just before the request
is sent, one time stamp per chunk that carries output text, the server's token usage when it
reports one. As in vLLM's harness, every streamed chunk that carries a choice (OpenAI) or a
``text_output`` (generate extension) counts as output, even when its text is empty (a
special token). Anything unexpected (HTTP error, error event, no output) marks the request
failed with the reason; nothing is dropped.

Plain vLLM has no v2 routes, so for a baseline target the v2 APIs are sent as the OpenAI
completions call that does the same engine work (raw prompt, no chat template):
see :data:`BASELINE_EQUIVALENT`.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import aiohttp

from benchmarks.records import RequestRecord
from benchmarks.workload import Prompt

APIS = ("openai-chat", "openai-completions", "v2-generate-stream", "v2-generate", "v2-infer",
        "v2-grpc", "v2-grpc-stream")
STREAMING = {"openai-chat", "openai-completions", "v2-generate-stream", "v2-grpc-stream"}
# What a server without v2 routes (plain vLLM) is sent instead, for the same engine work.
BASELINE_EQUIVALENT = {
    "v2-generate-stream": "openai-completions",
    "v2-generate": "openai-completions-nostream",
    "v2-infer": "openai-completions-nostream",
    "v2-grpc": "openai-completions-nostream",
    "v2-grpc-stream": "openai-completions",
}
MODEL_ORDERS = ("round-robin", "random")


def bearer(api_key: str | None) -> dict[str, str]:
    """The ``Authorization`` header for a runtime's ``--api_key`` (none without a key): one
    place for every HTTP request the benchmark tools send."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def new_traceparent() -> str:
    """A W3C ``traceparent`` starting a new sampled trace (random ids, flags ``01``): what a
    traced caller sends, so a server with tracing on records the request."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


@dataclass
class Target:
    """A server under test: its name, HTTP root, OpenAI prefix, model and gRPC address.

    ``models``, when given, spreads the requests over several served names of the same server
    (LoRA adapters, aliases) instead of ``model``: in turn (``model_order`` "round-robin") or
    drawn with the point's seed ("random"). Every sender reads ``model``, so a request goes to
    its name on every protocol (OpenAI ``model``, the v2 URL, gRPC ``model_name``).

    ``api_key``, when given, goes with every request as ``Authorization: Bearer KEY`` (HTTP)
    and as the ``authorization`` metadata (gRPC), as the runtime's ``--api_key`` requires.

    ``traceparent``, when true, gives every request a W3C ``traceparent`` of its own (a new
    sampled trace: HTTP header, gRPC metadata), as a traced caller would send: with
    ``--otlp-traces-endpoint`` the server's spans continue it (``frontend-cpu --traced``).
    """

    name: str
    url: str
    model: str
    openai_prefix: str = "/v1"
    grpc_url: str | None = None
    has_v2: bool = True
    models: tuple[str, ...] = ()
    model_order: str = "round-robin"
    api_key: str | None = field(default=None, repr=False)  # never printed with the target
    traceparent: bool = False

    def headers(self) -> dict[str, str]:
        """HTTP headers of one request to this target (the key, a fresh traceparent: if set).
        Called once per request, so each request is its own trace."""
        out = bearer(self.api_key)
        if self.traceparent:
            out["traceparent"] = new_traceparent()
        return out

    def grpc_metadata(self) -> dict[str, str] | None:
        """gRPC metadata of one call to this target (None without a key or traceparent)."""
        out = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        if self.traceparent:
            out["traceparent"] = new_traceparent()
        return out or None

    def describe(self) -> dict[str, Any]:
        """The target as ``run.json`` records it: the key replaced by whether one was sent."""
        out = asdict(self)
        out["api_key"] = "(set)" if self.api_key else None
        return out

    def api_for(self, api: str) -> str:
        """The API actually sent to this target for the requested ``api``."""
        return api if self.has_v2 else BASELINE_EQUIVALENT.get(api, api)

    def request_models(self, n: int, seed: int) -> list[str]:
        """The served name of each of ``n`` requests of a point (``seed``: the point's, so
        every target of a point gets the same draw)."""
        if not self.models:
            return [self.model] * n
        if self.model_order == "round-robin":
            return [self.models[i % len(self.models)] for i in range(n)]
        if self.model_order == "random":
            rng = random.Random(seed)
            return [rng.choice(self.models) for _ in range(n)]
        raise ValueError(f"unknown model order {self.model_order!r}; choose from "
                         f"{', '.join(MODEL_ORDERS)}")

    def for_model(self, model: str) -> Target:
        """This target with requests addressed to ``model``."""
        return self if model == self.model else replace(self, model=model)


@dataclass(frozen=True)
class Sampling:
    """Sampling settings sent with every request (same meaning on every API)."""

    temperature: float | None = 0.0
    ignore_eos: bool = True

    def params(self, max_tokens: int) -> dict[str, Any]:
        out: dict[str, Any] = {"max_tokens": max_tokens, "ignore_eos": self.ignore_eos}
        if self.temperature is not None:
            out["temperature"] = self.temperature
        return out


Sender = Callable[[Any, Target, Prompt, Sampling, RequestRecord], Coroutine[Any, Any, None]]


def _sse_messages(buffer: str) -> tuple[list[str], str]:
    """Split complete SSE messages off ``buffer``; return their data payloads and the rest."""
    buffer = buffer.replace("\r\n", "\n")
    *complete, rest = buffer.split("\n\n")
    payloads = []
    for message in complete:
        data = [line[5:].lstrip() for line in message.split("\n") if line.startswith("data:")]
        if data:
            payloads.append("\n".join(data))
    return payloads, rest


async def _stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                  record: RequestRecord, on_event: Callable[[dict[str, Any], float], None],
                  headers: dict[str, str]) -> None:
    record.begin()
    async with session.post(url, json=body, headers=headers) as resp:
        record.status = resp.status
        if resp.status != 200:
            record.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
            record.end = time.perf_counter()
            return
        buffer = ""
        async for raw in resp.content.iter_any():
            now = time.perf_counter()
            payloads, buffer = _sse_messages(buffer + raw.decode("utf-8", errors="replace"))
            for payload in payloads:
                if payload == "[DONE]":
                    continue
                on_event(json.loads(payload), now)
    record.end = record.chunk_times[-1] if record.chunk_times else time.perf_counter()
    if not record.error and not record.chunk_times:
        record.error = "stream ended without any output"
    record.success = not record.error


def _openai_usage(record: RequestRecord, event: dict[str, Any]) -> None:
    usage = event.get("usage") or {}
    if usage.get("completion_tokens") is not None:
        record.output_tokens = int(usage["completion_tokens"])
        record.token_source = "usage"
    if usage.get("prompt_tokens") is not None:
        record.prompt_tokens = int(usage["prompt_tokens"])


def _openai_event(record: RequestRecord, chat: bool) -> Callable[[dict[str, Any], float], None]:
    def on_event(event: dict[str, Any], now: float) -> None:
        if "error" in event:
            record.error = f"error event: {str(event['error'])[:300]}"
        choices = event.get("choices") or ()
        if choices:  # vLLM's harness: every chunk with a choice is a token, even if empty
            record.chunk_times.append(now)  # (a special token decodes to "", still a token)
        for choice in choices:
            piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            record.text += piece or ""
        _openai_usage(record, event)
    return on_event


async def openai_chat(session: Any, target: Target, prompt: Prompt, sampling: Sampling,
                      record: RequestRecord) -> None:
    """Streamed ``chat/completions`` with ``stream_options.include_usage``."""
    body = {"model": target.model, "messages": [{"role": "user", "content": prompt.text}],
            "stream": True, "stream_options": {"include_usage": True},
            **sampling.params(prompt.output_len)}
    url = f"{target.url}{target.openai_prefix}/chat/completions"
    await _stream(session, url, body, record, _openai_event(record, chat=True),
                  target.headers())


async def openai_completions(session: Any, target: Target, prompt: Prompt, sampling: Sampling,
                             record: RequestRecord) -> None:
    """Streamed ``completions`` with ``stream_options.include_usage``."""
    body = {"model": target.model, "prompt": prompt.text, "stream": True,
            "stream_options": {"include_usage": True}, **sampling.params(prompt.output_len)}
    url = f"{target.url}{target.openai_prefix}/completions"
    await _stream(session, url, body, record, _openai_event(record, chat=False),
                  target.headers())


_COUNT_KEYS = ("completion_tokens", "output_tokens", "num_output_tokens", "generated_tokens")


def _v2_counts(record: RequestRecord, obj: dict[str, Any]) -> None:
    """Token counts from a generate-extension body, if the server puts any there."""
    for source in (obj, obj.get("usage") or {}, obj.get("parameters") or {}):
        for key in _COUNT_KEYS:
            if isinstance(source.get(key), int):
                record.output_tokens, record.token_source = source[key], "usage"
        for key in ("prompt_tokens", "input_tokens", "num_input_tokens"):
            if isinstance(source.get(key), int):
                record.prompt_tokens = source[key]


async def v2_generate_stream(session: Any, target: Target, prompt: Prompt, sampling: Sampling,
                             record: RequestRecord) -> None:
    """The generate extension's SSE stream: one ``text_output`` delta per event."""
    body = {"text_input": prompt.text, "parameters": sampling.params(prompt.output_len)}
    url = f"{target.url}/v2/models/{target.model}/generate_stream"

    def on_event(event: dict[str, Any], now: float) -> None:
        if "error" in event:
            record.error = f"error event: {str(event['error'])[:300]}"
        if "text_output" in event:
            record.chunk_times.append(now)
            record.text += event["text_output"] or ""
        _v2_counts(record, event)

    await _stream(session, url, body, record, on_event, target.headers())


async def _post_once(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                     record: RequestRecord, extract: Callable[[dict[str, Any]], str],
                     headers: dict[str, str]) -> None:
    record.begin()
    async with session.post(url, json=body, headers=headers) as resp:
        record.status = resp.status
        payload = await resp.read()
        record.end = time.perf_counter()
    if record.status != 200:
        record.error = f"HTTP {record.status}: {payload[:300].decode(errors='replace')}"
        return
    record.answered(extract(json.loads(payload)))


async def v2_generate(session: Any, target: Target, prompt: Prompt, sampling: Sampling,
                      record: RequestRecord) -> None:
    """The generate extension, one JSON response (TTFT equals end-to-end latency)."""
    body = {"text_input": prompt.text, "parameters": sampling.params(prompt.output_len)}

    def extract(obj: dict[str, Any]) -> str:
        _v2_counts(record, obj)
        return obj.get("text_output") or ""

    await _post_once(session, f"{target.url}/v2/models/{target.model}/generate", body, record,
                     extract, target.headers())


async def v2_infer(session: Any, target: Target, prompt: Prompt, sampling: Sampling,
                   record: RequestRecord) -> None:
    """v2 REST infer with a ``text_input`` BYTES [1] tensor and sampling in ``parameters``."""
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1],
                        "data": [prompt.text]}],
            "parameters": sampling.params(prompt.output_len)}

    def extract(obj: dict[str, Any]) -> str:
        for out in obj.get("outputs") or ():
            if out.get("name") == "text_output" and out.get("data"):
                return str(out["data"][0])
        return ""

    await _post_once(session, f"{target.url}/v2/models/{target.model}/infer", body, record,
                     extract, target.headers())


async def openai_completions_nostream(session: Any, target: Target, prompt: Prompt,
                                      sampling: Sampling, record: RequestRecord) -> None:
    """Non-streamed ``completions``: the baseline twin of the non-streamed v2 APIs."""
    body = {"model": target.model, "prompt": prompt.text, **sampling.params(prompt.output_len)}

    def extract(obj: dict[str, Any]) -> str:
        _openai_usage(record, obj)
        choices = obj.get("choices") or [{}]
        return choices[0].get("text") or ""

    await _post_once(session, f"{target.url}{target.openai_prefix}/completions", body, record,
                     extract, target.headers())


SENDERS: dict[str, Sender] = {
    "openai-chat": openai_chat,
    "openai-completions": openai_completions,
    "openai-completions-nostream": openai_completions_nostream,
    "v2-generate-stream": v2_generate_stream,
    "v2-generate": v2_generate,
    "v2-infer": v2_infer,
}
