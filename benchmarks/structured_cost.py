"""What a JSON-schema constraint costs: output throughput against the same load unconstrained,
and the first-request cost of compiling a new schema (docs/structured-outputs.md).

Why a separate script: the load client (``python -m benchmarks``) measures protocols side by
side with plain vLLM; this one asks a single question of one running predictor. Usage::

    python -m benchmarks.structured_cost --url http://127.0.0.1:8080 [--requests 32]
        [--concurrency 8] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

SCHEMA = {"type": "object", "additionalProperties": False,
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


def _load(client: httpx.Client, args: argparse.Namespace,
          schema: dict[str, Any] | None) -> float:
    """Output tokens per second over ``args.requests`` requests at ``args.concurrency``."""
    def one(_: int) -> int:
        r = client.post("/openai/v1/chat/completions",
                        json=_body(args.model, args.max_tokens, schema))
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        tokens = sum(pool.map(one, range(args.requests)))
    return tokens / (time.perf_counter() - start)


def _latency(client: httpx.Client, model: str, schema: dict[str, Any]) -> float:
    start = time.perf_counter()
    client.post("/openai/v1/chat/completions", json=_body(model, 8, schema)).raise_for_status()
    return time.perf_counter() - start


def main() -> None:
    """Warm up, run the load unconstrained then constrained, then time a new schema twice."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    args = p.parse_args()
    with httpx.Client(base_url=args.url, timeout=600) as client:
        _latency(client, args.model, SCHEMA)  # warm: the constrained path and its grammar
        plain = _load(client, args, None)
        constrained = _load(client, args, SCHEMA)
        fresh = {**SCHEMA, "properties": {**SCHEMA["properties"],
                                          f"k{uuid.uuid4().hex[:8]}": {"type": "boolean"}}}
        first = _latency(client, args.model, fresh)
        again = _latency(client, args.model, fresh)
        # A distinct bounded repetition (maxLength) is the expensive part of a compile.
        length = 50 + uuid.uuid4().int % 400
        bounded = {**SCHEMA, "properties": {**SCHEMA["properties"],
                                            "note": {"type": "string", "maxLength": length}}}
        bounded_first = _latency(client, args.model, bounded)
        bounded_again = _latency(client, args.model, bounded)
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
        "maxLength_compile_cost_s": round(bounded_first - bounded_again, 3)}, indent=2))


if __name__ == "__main__":
    main()
