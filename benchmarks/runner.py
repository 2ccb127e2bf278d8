"""The ``run`` loop: every target, API, load point and repeat, interleaved, same prompts.

Why interleaved: on a shared machine, load from other processes drifts over minutes; running
target A's point then target B's point (rotating who goes first on every repeat and point)
spreads that drift over both instead of biasing one. Why fresh prompts per (API, point,
repeat): vLLM caches prefixes, so a prompt sent twice to the same server is cheaper the
second time; each set is shared by all targets, so both see exactly the same work.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from tqdm import tqdm

from benchmarks.clients import SENDERS, Sampling, Target
from benchmarks.load import Load, PointResult, run_point, self_check
from benchmarks.metrics import point_metrics
from benchmarks.records import RequestRecord
from benchmarks.scrape import PointScraper
from benchmarks.workload import Prompt, count_tokens


@dataclass
class RunPlan:
    """What to run: APIs, load points, repeats, warm-up, sampling and SLOs."""

    apis: list[str]
    loads: list[Load]
    repeats: int = 1
    warmup: int = 2
    seed: int = 0
    sampling: Sampling = field(default_factory=Sampling)
    slos_ms: dict[str, float] = field(default_factory=dict)
    request_timeout_s: float = 600.0
    cooldown_s: float = 2.0
    scrape_metrics: bool = False  # sample each target's /metrics while its points run
    scrape_interval_s: float = 1.0


@dataclass
class RunResult:
    """Every request record and one row of metrics and self-check per point."""

    records: list[RequestRecord]
    points: list[dict[str, Any]]
    origin: float
    warmup: dict[str, Any]
    metrics_samples: list[dict[str, Any]] = field(default_factory=list)


async def probe_target(target: Target) -> Target:
    """Find the target's OpenAI prefix (``/openai/v1`` or ``/v1``) and whether it has v2."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                     headers=target.headers()) as session:
        async def ok(path: str) -> bool:
            try:
                async with session.get(target.url + path) as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        if await ok("/openai/v1/models"):
            target.openai_prefix = "/openai/v1"
        target.has_v2 = await ok("/v2/health/ready")
    return target


def fill_token_counts(records: list[RequestRecord], tokenizer: Any) -> None:
    """Output tokens of successful requests whose server gave no usage, by tokenizing."""
    for r in records:
        if r.success and r.token_source != "usage":
            r.output_tokens = count_tokens(tokenizer, r.text)
            r.token_source = "tokenizer"


def order_targets(targets: list[Target], turn: int) -> list[Target]:
    """Rotate the target order by ``turn`` so no target always goes first."""
    k = turn % len(targets)
    return targets[k:] + targets[:k]


class _Clients:
    """One HTTP session (and gRPC client if needed) per target, reused across points."""

    def __init__(self, targets: list[Target], plan: RunPlan) -> None:
        self.targets, self.plan = targets, plan
        self.http: dict[str, aiohttp.ClientSession] = {}
        self.grpc: dict[str, Any] = {}
        self.scrape: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> _Clients:
        timeout = aiohttp.ClientTimeout(total=self.plan.request_timeout_s)
        if self.plan.scrape_metrics:  # its own session: a scrape never waits behind the load
            self.scrape = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=max(5.0, self.plan.scrape_interval_s)))
        for t in self.targets:
            self.http[t.name] = aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(limit=0, force_close=False))
            if {"v2-grpc", "v2-grpc-stream"} & set(self.plan.apis) and t.has_v2:
                from benchmarks.grpc_client import grpc_client

                self.grpc[t.name] = grpc_client(t)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for s in self.http.values():
            await s.close()
        if self.scrape is not None:
            await self.scrape.close()
        for c in self.grpc.values():
            await c.close()

    def sender_for(self, target: Target, api: str) -> tuple[Any, Any]:
        sent = target.api_for(api)
        if sent in ("v2-grpc", "v2-grpc-stream"):
            from benchmarks.grpc_client import v2_grpc, v2_grpc_stream

            return (v2_grpc if sent == "v2-grpc" else v2_grpc_stream), self.grpc[target.name]
        return SENDERS[sent], self.http[target.name]


async def run_benchmark(
    targets: list[Target], prompt_sets: dict[tuple[str, str, int], list[Prompt]],
    warmup_prompts: list[Prompt], plan: RunPlan, tokenizer: Any, progress: bool = True,
) -> RunResult:
    """Run ``plan`` against ``targets``; ``prompt_sets[(api, point, repeat)]`` are the prompts."""
    total = sum(len(p) for p in prompt_sets.values()) * len(targets)
    pbar = tqdm(total=total, desc="requests", unit="req", disable=not progress)
    records: list[RequestRecord] = []
    points: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    warm: dict[str, Any] = {}
    origin = time.perf_counter()
    async with _Clients(targets, plan) as clients:
        for t in targets:
            for api in plan.apis:
                sender, session = clients.sender_for(t, api)
                if plan.warmup and warmup_prompts:
                    res = await run_point(sender, session, t, warmup_prompts[:plan.warmup],
                                          plan.sampling, Load(concurrency=plan.warmup),
                                          api=api, repeat=-1, seed=plan.seed)
                    warm[f"{t.name}/{api}"] = {
                        "requests": len(res.records),
                        "failed": sum(not r.success for r in res.records),
                        "errors": sorted({r.error for r in res.records if r.error})[:3]}
        turn = 0
        for repeat in range(plan.repeats):
            for api in plan.apis:
                for li, load in enumerate(plan.loads):
                    prompts = prompt_sets[(api, load.label, repeat)]
                    for t in order_targets(targets, turn):
                        sender, session = clients.sender_for(t, api)
                        pbar.set_postfix_str(f"{t.name} {api} {load.label} rep {repeat}")
                        # vLLM's CPU engine keeps spinning ~1 s after its last request; on a
                        # small machine both engines share a core, so let the last one settle.
                        await asyncio.sleep(plan.cooldown_s)
                        scraper = None
                        if clients.scrape is not None:
                            scraper = PointScraper(
                                clients.scrape, t, {"target": t.name, "api": api,
                                                    "point": load.label, "repeat": repeat},
                                origin, plan.scrape_interval_s)
                            scraper.start()
                        res = await run_point(sender, session, t, prompts, plan.sampling, load,
                                              api=api, repeat=repeat,
                                              seed=plan.seed * 1000 + li * 10 + repeat,
                                              pbar=pbar)
                        fill_token_counts(res.records, tokenizer)
                        records.extend(res.records)
                        row = _point_row(t, api, load, repeat, res, plan)
                        if scraper is not None:
                            row.update(await scraper.stop())
                            samples.extend(scraper.samples)
                        points.append(row)
                    turn += 1
    pbar.close()
    return RunResult(records, points, origin, warm, samples)


def _point_row(target: Target, api: str, load: Load, repeat: int, res: PointResult,
               plan: RunPlan) -> dict[str, Any]:
    row: dict[str, Any] = {
        "target": target.name, "api": api, "api_sent": target.api_for(api),
        "point": load.label, "load_kind": "concurrency" if load.concurrency is not None
        else "rate", "load": load.value, "burstiness": load.burstiness, "repeat": repeat,
    }
    row.update(point_metrics(res.records, res.duration_s, plan.slos_ms))
    row["check"] = self_check(res, load)
    row["token_sources"] = sorted({r.token_source for r in res.records if r.success})
    return row


def run(targets: list[Target], prompt_sets: dict[tuple[str, str, int], list[Prompt]],
        warmup_prompts: list[Prompt], plan: RunPlan, tokenizer: Any,
        progress: bool = True) -> RunResult:
    """Synchronous entry point: probe the targets, then :func:`run_benchmark`."""

    async def main() -> RunResult:
        for t in targets:
            await probe_target(t)
        return await run_benchmark(targets, prompt_sets, warmup_prompts, plan, tokenizer,
                                   progress)

    return asyncio.run(main())
