"""Metrics of one load point, with vLLM's definitions (``vllm/benchmarks/serve.py``).

Why copy the definitions rather than invent: numbers from this tool must mean the same as
numbers from ``vllm bench serve`` so that users can put them side by side. In particular:

- TTFT: first output-carrying chunk minus request start.
- TPOT: (E2E - TTFT) / (output tokens - 1), only for requests with more than one token.
- ITL: every gap between consecutive output-carrying chunks, pooled over requests.
- E2E latency: request start to the last output-carrying chunk.
- Throughputs divide totals over successful requests by the point's wall duration.
- Goodput: successful requests per second whose TTFT / TPOT / E2E meet every SLO given
  (a request with one token counts TPOT as 0, as vLLM does).
- Percentiles: ``numpy.percentile`` (linear interpolation); empty lists give 0.

Failed requests are counted (``failed``) and never enter a latency distribution, exactly
as in vLLM; a point with failures is flagged in the summary instead of being hidden.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from benchmarks.records import RequestRecord

PERCENTILES: tuple[int, ...] = (90, 95, 99)
LATENCIES: tuple[str, ...] = ("ttft", "tpot", "itl", "e2el")


def parse_goodput(items: Sequence[str] | None) -> dict[str, float]:
    """``["ttft:500", "tpot:100"]`` -> ``{"ttft": 500.0, "tpot": 100.0}`` (milliseconds)."""
    slos: dict[str, float] = {}
    for item in items or ():
        for part in item.replace(",", " ").split():
            name, _, value = part.partition(":")
            if name not in ("ttft", "tpot", "e2el") or not value:
                raise ValueError(f"bad goodput SLO {part!r}: expected ttft:MS, tpot:MS or e2el:MS")
            ms = float(value)
            if ms < 0:
                raise ValueError(f"goodput SLO {part!r} must not be negative")
            slos[name] = ms
    return slos


def summarize(values_s: Iterable[float]) -> dict[str, float]:
    """Mean, std, median and the selected percentiles of a list of seconds, in milliseconds."""
    arr = np.asarray(list(values_s), dtype=float)
    if arr.size == 0:
        arr = np.zeros(1)
    out = {
        "mean": float(np.mean(arr)) * 1000,
        "std": float(np.std(arr)) * 1000,
        "median": float(np.median(arr)) * 1000,
    }
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(arr, p)) * 1000
    return out


def is_good(record: RequestRecord, slos_ms: dict[str, float]) -> bool:
    """Whether a successful request meets every SLO (vLLM's goodput rule)."""
    if not record.success:
        return False
    measured = {"ttft": record.ttft, "tpot": record.tpot or 0.0, "e2el": record.latency}
    return all(measured[name] <= ms / 1000 for name, ms in slos_ms.items())


def point_metrics(
    records: Sequence[RequestRecord], duration_s: float, slos_ms: dict[str, float] | None = None
) -> dict[str, Any]:
    """All metrics of one (target, load point, repeat) from its request records."""
    if duration_s <= 0:
        raise ValueError("duration must be positive")
    ok = [r for r in records if r.success]
    total_out = sum(r.output_tokens for r in ok)
    total_in = sum(r.prompt_tokens for r in ok)
    out: dict[str, Any] = {
        "requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "duration_s": duration_s,
        "request_throughput": len(ok) / duration_s,
        "output_throughput": total_out / duration_s,
        "total_token_throughput": (total_in + total_out) / duration_s,
    }
    if slos_ms:
        out["goodput"] = sum(is_good(r, slos_ms) for r in ok) / duration_s
    series = {
        "ttft": [r.ttft for r in ok],
        "tpot": [t for r in ok if (t := r.tpot) is not None],
        "itl": [gap for r in ok for gap in r.itl],
        "e2el": [r.latency for r in ok],
    }
    for name, values in series.items():
        for stat, value in summarize(values).items():
            out[f"{stat}_{name}_ms"] = value
    out["errors"] = sorted({r.error.splitlines()[0][:200] for r in records if r.error})[:10]
    return out


def run_span(records: Sequence[RequestRecord]) -> float:
    """Wall span of a set of requests: first start to last end (failed ones included)."""
    starts = [r.start for r in records]
    ends = [max(r.end, r.start) for r in records]
    return max(ends) - min(starts) if records else 0.0
