"""What a JSON-schema constraint costs: output throughput against the same load unconstrained,
and the first-request cost of compiling a new schema (docs/structured-outputs.md).

Why a separate script: the load client (``python -m benchmarks``) measures protocols side by
side with plain vLLM; this one asks a single question of one running predictor. Usage::

    python -m benchmarks.structured_cost --url http://127.0.0.1:8080 [--requests 32]
        [--concurrency 8] [--max-tokens 128] [--answers answers.jsonl]

Besides the rates it reports what they were computed from (tokens and seconds of each
load), the requests it sent and the output tokens the server reported for all of them, and
``--answers`` keeps every answer, so the report can be checked against the server's own
counters and outputs.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.clients import bearer

SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["city", "celsius", "summary"],
    "properties": {"city": {"type": "string", "maxLength": 20},
                   "celsius": {"type": "integer", "minimum": -30, "maximum": 45},
                   "summary": {"type": "string"}}}


def _body(model: str, max_tokens: int, schema: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "temperature": 1.0, "max_tokens": max_tokens, "ignore_eos": True,
        "messages": [{"role": "user", "content": "Describe today's weather in Paris as JSON."}]}
    if schema is not None:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "w", "schema": schema}}
    return body


class Session:
    """One client to the predictor that keeps every answer it got: how many requests were
    sent, how many output tokens the server reported, and (``--answers``) each answer's text,
    so that a reader can check the report against the server's own counters and outputs."""

    def __init__(self, client: httpx.Client, model: str) -> None:
        self.client, self.model = client, model
        self.answers: list[dict[str, Any]] = []

    def ask(self, phase: str, max_tokens: int, schema: dict[str, Any] | None) -> int:
        """One chat completion; its output tokens (the server's ``usage``)."""
        r = self.client.post("/openai/v1/chat/completions",
                             json=_body(self.model, max_tokens, schema))
        r.raise_for_status()
        answer = r.json()
        tokens = int(answer["usage"]["completion_tokens"])
        self.answers.append({"phase": phase, "constrained": schema is not None,
                             "schema_properties": sorted((schema or {}).get("properties", {})),
                             "completion_tokens": tokens,
                             "text": answer["choices"][0]["message"]["content"]})
        return tokens

    def load(self, phase: str, args: argparse.Namespace,
             schema: dict[str, Any] | None) -> tuple[int, float]:
        """``args.requests`` requests at ``args.concurrency``: output tokens and seconds."""
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            tokens = sum(pool.map(lambda _: self.ask(phase, args.max_tokens, schema),
                                  range(args.requests)))
        return tokens, time.perf_counter() - start

    def latency(self, phase: str, schema: dict[str, Any]) -> float:
        start = time.perf_counter()
        self.ask(phase, 8, schema)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    """Warm up, run the load unconstrained then constrained, then time a new schema twice."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="the predictor's key, sent as 'Authorization: Bearer KEY'")
    p.add_argument("--answers", type=Path, default=None, metavar="FILE",
                   help="write every answer (phase, constrained or not, tokens, text) as JSONL")
    args = p.parse_args(argv)
    with httpx.Client(base_url=args.url, timeout=600, headers=bearer(args.api_key)) as client:
        s = Session(client, args.model)
        s.latency("warm-up", SCHEMA)  # warm: the constrained path and its grammar
        plain_tokens, plain_s = s.load("unconstrained", args, None)
        constrained_tokens, constrained_s = s.load("json_schema", args, SCHEMA)
        fresh = {**SCHEMA, "properties": {**SCHEMA["properties"],
                                          f"k{uuid.uuid4().hex[:8]}": {"type": "boolean"}}}
        first = s.latency("new_schema", fresh)
        again = s.latency("same_schema_again", fresh)
        # A distinct bounded repetition (maxLength) is the expensive part of a compile.
        length = 50 + uuid.uuid4().int % 400
        bounded = {**SCHEMA, "properties": {**SCHEMA["properties"],
                                            "note": {"type": "string", "maxLength": length}}}
        bounded_first = s.latency("new_maxLength_schema", bounded)
        bounded_again = s.latency("new_maxLength_schema_again", bounded)
    plain, constrained = plain_tokens / plain_s, constrained_tokens / constrained_s
    if args.answers:
        args.answers.write_text("".join(json.dumps(a) + "\n" for a in s.answers))
    print(json.dumps({
        "requests": args.requests, "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "unconstrained_output_tokens_per_s": round(plain, 1),
        "json_schema_output_tokens_per_s": round(constrained, 1),
        "ratio": round(constrained / plain, 3),
        "new_schema_first_request_s": round(first, 3),
        "same_schema_again_s": round(again, 3),
        "compile_cost_s": round(first - again, 3),
        "new_maxLength_schema_first_request_s": round(bounded_first, 3),
        "new_maxLength_schema_again_s": round(bounded_again, 3),
        "maxLength_compile_cost_s": round(bounded_first - bounded_again, 3),
        "unconstrained_output_tokens": plain_tokens, "unconstrained_s": round(plain_s, 6),
        "json_schema_output_tokens": constrained_tokens,
        "json_schema_s": round(constrained_s, 6),
        "requests_sent": len(s.answers),
        "output_tokens_received": sum(a["completion_tokens"] for a in s.answers)}, indent=2))


if __name__ == "__main__":
    main()
