"""Load generation for one (target, API, load point): closed loop or open loop.

Why both: a closed loop (a fixed number of users, each sending its next request when the
last one ends) measures capacity at a concurrency, the way users size a deployment; an open
loop (Poisson arrivals, or gamma with ``burstiness`` != 1, vLLM's generator) measures latency
at an offered rate, without the coordinated omission of a closed loop.

The client checks itself while it runs, because a saturated client reports the client's
limits as the server's: dispatch lag (how late each request left against its schedule), the
event loop's lag (a 10 ms ticker), the achieved request rate against the requested one, and
the process's CPU time over the wall time. :func:`self_check` turns these into a verdict.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.clients import Sampling, Sender, Target
from benchmarks.records import RequestRecord
from benchmarks.workload import Prompt

# A point is invalid when the client was the bottleneck by any of these measures.
MAX_CLIENT_CPU = 0.90  # fraction of one core (the client is one asyncio thread)
MAX_DISPATCH_LAG_P99_S = 0.050
MAX_LOOP_LAG_P99_S = 0.050
MIN_RATE_RATIO = 0.90


@dataclass
class Load:
    """A load point: ``concurrency`` users (closed loop) or ``rate`` req/s (open loop)."""

    concurrency: int | None = None
    rate: float | None = None
    burstiness: float = 1.0

    @property
    def label(self) -> str:
        return f"c{self.concurrency}" if self.concurrency is not None else f"r{self.rate:g}"

    @property
    def value(self) -> float:
        return float(self.concurrency if self.concurrency is not None else self.rate or 0.0)


@dataclass
class PointResult:
    """What one point produced: its records, wall duration and the client's own measures."""

    records: list[RequestRecord]
    duration_s: float
    client_cpu_s: float
    loop_lags_s: list[float] = field(default_factory=list)


def arrival_offsets(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Send offsets (s) for ``n`` requests: gamma intervals (shape ``burstiness``, mean
    1/``rate``), cumulated and scaled so the last falls at n/rate, as vLLM's generator does."""
    if rate <= 0 or burstiness <= 0:
        raise ValueError("request rate and burstiness must be positive")
    if rate == float("inf"):
        return [0.0] * n
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    offsets = np.cumsum(gaps)
    offsets *= (n / rate) / offsets[-1]
    return [float(x) for x in offsets]


async def _loop_lag(lags: list[float], stop: asyncio.Event, tick: float = 0.01) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(tick)
        lags.append(max(0.0, time.perf_counter() - before - tick))


async def _one(sender: Sender, session: Any, target: Target, prompt: Prompt,
               sampling: Sampling, record: RequestRecord, pbar: Any) -> None:
    try:
        await sender(session, target, prompt, sampling, record)
    except Exception as exc:  # a failed request is a result, never a crash of the run
        record.success = False
        record.error = f"{type(exc).__name__}: {exc}"[:400] or type(exc).__name__
        if not record.start:
            record.start = time.perf_counter()
        record.end = time.perf_counter()
    if not record.prompt_tokens:
        record.prompt_tokens = prompt.input_tokens
    if pbar is not None:
        pbar.update(1)


async def run_point(
    sender: Sender, session: Any, target: Target, prompts: Sequence[Prompt],
    sampling: Sampling, load: Load, *, api: str, repeat: int, seed: int, pbar: Any = None,
) -> PointResult:
    """Send every prompt once to ``target`` under ``load``; return the records. Request i
    goes to the served name ``target.request_models(...)[i]`` (``target.model`` by default)."""
    names = target.request_models(len(prompts), seed)
    sent_to = [target.for_model(m) for m in names]
    records = [RequestRecord(target=target.name, api=api, point=load.label, repeat=repeat,
                             index=i, prompt_index=i, model=names[i])
               for i in range(len(prompts))]
    lags: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(_loop_lag(lags, stop))
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if load.concurrency is not None:
        queue = list(range(len(prompts)))[::-1]

        async def user() -> None:
            ready = t0
            while queue:
                i = queue.pop()
                records[i].scheduled = ready
                await _one(sender, session, sent_to[i], prompts[i], sampling, records[i],
                           pbar)
                ready = time.perf_counter()

        await asyncio.gather(*(user() for _ in range(min(load.concurrency, len(prompts)))))
    else:
        assert load.rate is not None
        tasks = []
        for i, offset in enumerate(arrival_offsets(len(prompts), load.rate, load.burstiness,
                                                   seed)):
            records[i].scheduled = t0 + offset
            delay = records[i].scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(
                _one(sender, session, sent_to[i], prompts[i], sampling, records[i], pbar)))
        await asyncio.gather(*tasks)
    duration = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    stop.set()
    await ticker
    return PointResult(records, duration, cpu, lags)


def self_check(result: PointResult, load: Load) -> dict[str, Any]:
    """The client's verdict on itself for one point: measures, and why it is invalid if so."""
    lags = [r.dispatch_lag for r in result.records]
    loop = result.loop_lags_s or [0.0]
    check: dict[str, Any] = {
        "client_cpu_fraction": result.client_cpu_s / result.duration_s,
        "dispatch_lag_p50_ms": float(np.percentile(lags, 50)) * 1000 if lags else 0.0,
        "dispatch_lag_p99_ms": float(np.percentile(lags, 99)) * 1000 if lags else 0.0,
        "loop_lag_p99_ms": float(np.percentile(loop, 99)) * 1000,
        "requested_rate": load.rate,
        "achieved_rate": None,
        "scheduled_rate": None,
    }
    reasons = []
    # (a point that failed at once lasts milliseconds: its CPU fraction says nothing)
    if check["client_cpu_fraction"] > MAX_CLIENT_CPU and result.duration_s >= 1.0:
        reasons.append(f"client CPU {check['client_cpu_fraction']:.0%} of a core")
    if check["dispatch_lag_p99_ms"] > MAX_DISPATCH_LAG_P99_S * 1000:
        reasons.append(f"dispatch lag p99 {check['dispatch_lag_p99_ms']:.0f} ms")
    if check["loop_lag_p99_ms"] > MAX_LOOP_LAG_P99_S * 1000:
        reasons.append(f"event-loop lag p99 {check['loop_lag_p99_ms']:.0f} ms")
    if load.rate is not None and load.rate != float("inf") and len(result.records) > 1:
        starts = sorted(r.start for r in result.records)
        sched = sorted(r.scheduled for r in result.records)
        n = len(starts) - 1
        achieved = n / (starts[-1] - starts[0]) if starts[-1] > starts[0] else float("inf")
        scheduled = n / (sched[-1] - sched[0]) if sched[-1] > sched[0] else float("inf")
        check["achieved_rate"], check["scheduled_rate"] = achieved, scheduled
        # Poisson draws make the schedule's own rate vary; the client is judged against it.
        if achieved < MIN_RATE_RATIO * scheduled:
            reasons.append(f"achieved {achieved:.2f} req/s of {scheduled:.2f} scheduled")
    check["valid"] = not reasons
    check["invalid_reasons"] = reasons
    return check
