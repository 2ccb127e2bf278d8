"""``--scrape-metrics``: the server's scaling signals, sampled while each load point runs.

Why: an autoscaling threshold is a value of a server gauge (waiting requests, KV-cache use)
at which latency starts to suffer, so choosing one needs both halves of the curve from the
same run: the gauges the autoscaler would read, and the latency the client saw, at each
offered load. The benchmark already measures the latency; this samples the gauges.

While a point runs against a target, a background task GETs that target's ``/metrics`` once
per ``interval_s`` (with the run's key, if any, as a Bearer header), parses the text with
prometheus_client's own parser and keeps, per series of :data:`SERIES`, the sum over its
label sets (one model, one engine: the sum is the value; several: the replica's total). A
series the server does not export (plain vLLM has no ``kserve_llm_requests_admitted_waiting``)
is recorded as absent, not as 0, so a plot or table never shows a runtime-only signal for a
server that has none. A scrape that fails is counted, not fatal: the load is what matters.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.clients import Target

# Series name -> short column name used in samples, point rows and plots.
SERIES: dict[str, str] = {
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "kv_cache",
    "kserve_llm_requests_admitted_waiting": "admitted_waiting",
}
SAMPLE_COLUMNS = ("time_s", "unix_time", "target", "api", "point", "repeat",
                  *SERIES.values())
# Per point: mean and max of every series, and how many scrapes succeeded / failed.
POINT_COLUMNS = (*(f"{short}_{stat}" for short in SERIES.values() for stat in ("mean", "max")),
                 "metrics_samples", "metrics_scrape_errors")


def parse_metrics(text: str) -> dict[str, float]:
    """The :data:`SERIES` present in a Prometheus text exposition, each summed over its label
    sets, keyed by short name; a series with no sample is left out (absent, not 0)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            short = SERIES.get(sample.name)
            if short is not None:
                out[short] = out.get(short, 0.0) + float(sample.value)
    return out


def aggregate(samples: Sequence[dict[str, Any]], errors: int = 0) -> dict[str, Any]:
    """Mean and max of every series over one point's samples (None where the server never
    exported it), with the number of samples and of failed scrapes."""
    out: dict[str, Any] = {}
    for short in SERIES.values():
        values = [s[short] for s in samples if s.get(short) is not None]
        out[f"{short}_mean"] = float(np.mean(values)) if values else None
        out[f"{short}_max"] = float(np.max(values)) if values else None
    out["metrics_samples"] = len(samples)
    out["metrics_scrape_errors"] = errors
    return out


class PointScraper:
    """Samples one target's ``/metrics`` every ``interval_s`` from :meth:`start` to :meth:`stop`.

    Why a task per point (not one for the whole run): every sample then belongs to exactly
    one (target, API, point, repeat), so the per-point aggregation needs no time join.
    """

    def __init__(self, session: aiohttp.ClientSession, target: Target, meta: dict[str, Any],
                 origin: float, interval_s: float = 1.0) -> None:
        self.session, self.target, self.meta = session, target, meta
        self.origin, self.interval_s = origin, interval_s
        self.samples: list[dict[str, Any]] = []
        self.errors = 0
        self.last_error = ""
        self._task: asyncio.Task[None] | None = None

    async def scrape_once(self) -> None:
        """One GET and parse; appends a sample, or counts the failure."""
        at, unix = time.perf_counter(), time.time()
        try:
            async with self.session.get(self.target.url + "/metrics",
                                        headers=self.target.headers()) as resp:
                body = await resp.text()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {body[:100]}")
            values = parse_metrics(body)
        except (TimeoutError, aiohttp.ClientError, RuntimeError, ValueError, IndexError) as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            return
        self.samples.append({"time_s": at - self.origin, "unix_time": unix, **self.meta,
                             **{short: values.get(short) for short in SERIES.values()}})

    async def _loop(self) -> None:
        due = time.perf_counter()
        while True:
            await self.scrape_once()
            due += self.interval_s
            await asyncio.sleep(max(0.0, due - time.perf_counter()))

    def start(self) -> None:
        """Begin sampling (first sample now) on the running event loop."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> dict[str, Any]:
        """Stop sampling; the point's aggregate (:func:`aggregate`)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        out = aggregate(self.samples, self.errors)
        if self.last_error:
            out["metrics_last_error"] = self.last_error
        return out


def write_samples(path: Path, samples: Sequence[dict[str, Any]]) -> None:
    """``metrics_samples.csv``: one row per scrape (absent series as empty cells)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SAMPLE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for s in samples:
            writer.writerow({k: ("" if v is None else v) for k, v in s.items()})


def metrics_markdown(points: Sequence[dict[str, Any]]) -> str:
    """summary.md's table of the sampled signals per point (only points that were sampled)."""
    def cell(p: dict[str, Any], short: str, fmt: str) -> str:
        mean, peak = p.get(f"{short}_mean"), p.get(f"{short}_max")
        return "-" if mean is None else f"{mean:{fmt}}/{peak:{fmt}}"

    lines = ["| target | API | load | rep | samples (failed) | waiting mean/max | "
             "admitted waiting mean/max | running mean/max | KV-cache use mean/max |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        if "metrics_samples" not in p:
            continue
        lines.append(
            f"| {p['target']} | {p['api']} | {p['point']} | {p['repeat']} | "
            f"{p['metrics_samples']} ({p['metrics_scrape_errors']}) | "
            f"{cell(p, 'waiting', '.2f')} | {cell(p, 'admitted_waiting', '.2f')} | "
            f"{cell(p, 'running', '.2f')} | {cell(p, 'kv_cache', '.3f')} |")
    return "\n".join(lines) + "\n"
