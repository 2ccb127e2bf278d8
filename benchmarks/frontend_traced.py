"""``frontend-cpu --traced``: the runtime with ``--otlp-traces-endpoint`` against the runtime
without it, in the same run, so the cost of tracing is a ratio of two measured rows.

Why a second runtime rather than a switch: tracing is set when the engine starts. The traced
runtime exports to an OTLP/gRPC receiver in the benchmark process (:mod:`benchmarks.otlp`,
counting spans only); every request to every server carries its own W3C ``traceparent``
(``Target.traceparent``), so the only difference between the two runtimes is the flag. The
receiver's counts say whether tracing did anything: at least one runtime span and one vLLM
``llm_request`` span per request, or the report warns.

Spans are batched and exported every 5 s (OpenTelemetry's default), some after a load's last
response: each measured window of the traced runtime stays open until the receiver has the
spans of every request sent so far (:meth:`SpanWatch.settle`), so the export's CPU is in the
row. The wait's idle CPU is in it too (a few ms per load; the wait is reported).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from benchmarks.frontend_cpu import LABELS
from benchmarks.otlp import Receiver
from benchmarks.servers import settings_differences

TRACED = "runtime (traced)"
RUNTIME_SERVICE = "kserve-llm-runtime"  # runtime/tracing.py's service.name
ENGINE_SPAN = "llm_request"  # vLLM's span of one engine request
_ENDPOINT = re.compile(r"otlp_traces_endpoint=('[^']*'|None)")


def tally(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    """Received spans as the report groups them: the runtime's (by service), vLLM's
    ``llm_request`` and anything else."""
    out = {"runtime": 0, ENGINE_SPAN: 0, "other": 0}
    for (service, name), n in counts.items():
        key = ("runtime" if service == RUNTIME_SERVICE
               else ENGINE_SPAN if name == ENGINE_SPAN else "other")
        out[key] += n
    return out


class SpanWatch:
    """The receiver as one measured server sees it: spans per window, and the wait for the
    spans of the requests sent so far."""

    def __init__(self, receiver: Receiver, timeout_s: float = 15.0) -> None:
        self.receiver, self.timeout_s = receiver, timeout_s
        self.endpoint = receiver.endpoint
        self.sent = 0  # requests sent to the traced server so far (the last settle's count)
        self._start = self.now()

    def now(self) -> dict[str, int]:
        """Spans received so far, grouped by :func:`tally`."""
        return tally(self.receiver.snapshot())

    def begin(self) -> None:
        """A measured window starts: spans are counted from here."""
        self._start = self.now()

    async def settle(self, sent: int) -> dict[str, Any]:
        """Wait (at most ``timeout_s``) until there are ``sent`` runtime spans and ``sent``
        ``llm_request`` spans; the wait and the spans received since :meth:`begin`."""
        self.sent = sent
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.timeout_s:
            got = self.now()
            if got["runtime"] >= sent and got[ENGINE_SPAN] >= sent:
                break
            await asyncio.sleep(0.05)
        got = self.now()
        return {"flush_wait_s": time.perf_counter() - t0,
                "spans": {k: got[k] - self._start[k] for k in got}}


    def record(self) -> dict[str, Any]:
        """What the report keeps: the endpoint, requests sent, spans received (grouped, and
        per service and name)."""
        return {"endpoint": self.endpoint, "requests_sent": self.sent, "spans": self.now(),
                "by_name": [[service, name, n] for (service, name), n
                            in sorted(self.receiver.snapshot().items())]}


def endpoint_args(endpoint: str) -> list[str]:
    """The engine argument that turns tracing on (vLLM's flag, read by the runtime too)."""
    return ["--otlp-traces-endpoint", endpoint]


def traced_differences(untraced: dict[str, str] | None, traced: dict[str, str] | None
                       ) -> list[str]:
    """Engine settings that differ between the two runtimes, the trace endpoint aside."""
    def strip(s: dict[str, str] | None) -> dict[str, str] | None:
        return None if s is None else {k: _ENDPOINT.sub("otlp_traces_endpoint=*", v)
                                       for k, v in s.items()}
    return settings_differences(strip(untraced), strip(traced))


def add_ratios(summary: list[dict[str, Any]]) -> None:
    """Give every traced row ``vs_untraced``: its ms per 1000 tokens over the untraced
    runtime's on the same API (None when either is missing)."""
    base = {r["api"]: r["ms_per_1k_tokens"] for r in summary if r["server"] == "runtime"}
    for r in summary:
        if r["server"] == TRACED:
            ms, ref = r["ms_per_1k_tokens"], base.get(r["api"])
            r["vs_untraced"] = ms / ref if ms is not None and ref else None


def _f(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def markdown_section(doc: dict[str, Any]) -> list[str]:
    """The tracing part of the report: cost per API, spans received, and warnings."""
    rows = {(r["server"], r["api"]): r for r in doc["summary"]}
    lines = ["", "## Tracing cost", "",
             "Same run: the runtime with `--otlp-traces-endpoint` (exporting to an OTLP/gRPC "
             "receiver in the benchmark process) against the runtime without it; every "
             "request to every server carried a W3C `traceparent`.", "",
             "| API | runtime ms / 1000 tokens | traced ms / 1000 tokens | traced / untraced "
             "| untraced vs vLLM completions | untraced vs vLLM chat |",
             "|---|---|---|---|---|---|"]
    for api in doc["config"]["apis"]:
        plain, traced = rows.get(("runtime", api)), rows.get((TRACED, api))
        if not plain or not traced:
            continue
        lines.append(
            f"| {LABELS.get(api, api)} | {_f(plain['ms_per_1k_tokens'], '.0f')} | "
            f"{_f(traced['ms_per_1k_tokens'], '.0f')} | "
            f"**{_f(traced.get('vs_untraced'), '.3f', 'x')}** | "
            f"{_f(plain['vs_vllm_completions'], '.2f', 'x')} | "
            f"{_f(plain['vs_vllm_chat'], '.2f', 'x')} |")
    t = doc["tracing"]
    spans, sent = t["spans"], t["requests_sent"]
    mine = [p for p in doc["points"] if p["server"] == TRACED]
    waits = [p["flush_wait_s"] for p in mine if p.get("flush_wait_s") is not None]
    idle = [p["idle_ms_per_s"] for p in mine if p.get("idle_ms_per_s") is not None]
    tokens = sum(p["tokens"] for p in mine) / len(mine) if mine else 0
    wait = sum(waits) / len(waits) if waits else None
    # the wait's idle CPU at the idle rate measured between loads, per 1000 tokens of a load
    bias = (wait * sum(idle) / len(idle) * 1000 / tokens
            if wait is not None and idle and tokens else None)
    lines += ["", f"- Spans received from the traced runtime: {spans['runtime']} runtime spans "
              f"(service `{RUNTIME_SERVICE}`), {spans[ENGINE_SPAN]} vLLM `{ENGINE_SPAN}` spans, "
              f"{spans['other']} others, for {sent} requests (warm-up included)",
              f"- Measured windows of the traced runtime stayed open until their spans had "
              f"arrived: wait {_f(wait, '.1f')} s per load on average; its idle CPU, at the "
              f"idle rate measured between loads, is about {_f(bias, '.1f')} ms per 1000 "
              "tokens of the traced rows"]
    for key in ("runtime", ENGINE_SPAN):
        if spans[key] < sent:
            lines.append(f"- WARNING: fewer {key} spans ({spans[key]}) than requests ({sent}):"
                         " tracing did not record every request")
    return lines
