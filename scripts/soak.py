"""Soak test for the predictor: mixed traffic on every protocol for N minutes, while the
server's memory, file descriptors and latency are sampled over time (issue 6, item 7).

Why: leaks (memory, sockets, engine requests left behind by clients that go away) show only
over time and under mixed load. This script runs a bounded number of concurrent clients that
cycle through OpenAI chat (streamed and not), completions, v2 infer REST, generate,
generate_stream and gRPC ModelInfer (tritonclient), a few of them dropping streams early; it
samples RSS and open FDs of the server process and all its descendants (the engine core and its
worker are children) with psutil, and per-protocol latency, every few seconds. It writes
``PREFIX.csv`` (samples), ``PREFIX.json`` (summary) and ``PREFIX.png`` (plot). Loopback only.

    python scripts/soak.py --url http://127.0.0.1:8080 --grpc-port 8081 --pid PID --minutes 10
    python scripts/soak.py --start --model-dir .models/smollm2 --minutes 10 --out docs/img/soak
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import psutil

from deployment.processes import ServerProcess, free_port, runtime_command, stop_on_sigterm
from runtime.auth import redact_argv

PROTOCOLS = ("openai-chat", "openai-chat-stream", "openai-completions", "v2-infer", "generate",
             "generate-stream", "grpc-infer")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TOPICS = ["France", "Germany", "Italy", "Spain", "Japan", "Canada", "Brazil", "Egypt", "India",
          "Kenya", "Peru", "Norway"]


@dataclass
class Stats:
    """Everything the workers and the sampler share (one event loop: no locks needed)."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PROTOCOLS})
    ok: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROTOCOLS, 0))
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROTOCOLS, 0))
    aborted: int = 0
    empty: int = 0  # answered, but no text (the model stopped at once): counted, not an error
    last_error: str = ""
    window: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PROTOCOLS})


class Traffic:
    """One request of each protocol, small and varied (a different prompt every time, so the
    prefix cache does not turn the soak into a cache benchmark)."""

    def __init__(self, args: argparse.Namespace, stats: Stats) -> None:
        self.args, self.stats, self.model = args, stats, args.model
        headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        self.http = httpx.AsyncClient(base_url=args.url, timeout=args.timeout, headers=headers)
        import tritonclient.grpc.aio as grpcclient  # not kserve's client: one proto per process

        self.grpcclient = grpcclient
        self.grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{args.grpc_port}")
        self.grpc_headers = headers or None
        self.rng = random.Random(args.seed)

    def prompt(self) -> str:
        """A question (chat template applied on every route that has one)."""
        return (f"In one sentence, what is the capital of {self.rng.choice(TOPICS)}? "
                f"(request {self.rng.randrange(10**6)})")

    def raw_prompt(self) -> str:
        """Text to continue, for plain completions."""
        return (f"Request {self.rng.randrange(10**6)}. The capital of "
                f"{self.rng.choice(TOPICS)} is")

    async def close(self) -> None:
        await self.http.aclose()
        await self.grpc.close()

    async def one(self, protocol: str) -> None:
        t0 = time.monotonic()
        try:
            text = await getattr(self, protocol.replace("-", "_"))()
        except Exception as exc:  # any failure is counted, the soak goes on
            self.stats.errors[protocol] += 1
            self.stats.last_error = f"{protocol}: {type(exc).__name__}: {str(exc)[:200]}"
            return
        if text is None:  # dropped on purpose
            self.stats.aborted += 1
            return
        if not text.strip():
            self.stats.empty += 1
        latency = time.monotonic() - t0
        self.stats.ok[protocol] += 1
        self.stats.latencies[protocol].append(latency)
        self.stats.window[protocol].append(latency)

    def _drop(self) -> bool:
        return self.rng.random() < self.args.abort_fraction

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.post(path, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code} {r.text[:200]}")
        return r.json()

    async def _sse(self, path: str, body: dict[str, Any], pick: Any) -> str | None:
        """Read a server-sent event stream; maybe drop it after the first event."""
        drop, parts = self._drop(), []
        async with self.http.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code} {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(f"error event: {event['error']}")
                parts.append(pick(event) or "")
                if drop:
                    return None  # leaving the block closes the connection mid-stream
        return "".join(parts)

    def _chat(self, stream: bool) -> dict[str, Any]:
        return {"model": self.model, "max_tokens": self.args.max_tokens, "temperature": 0,
                "stream": stream, "messages": [{"role": "user", "content": self.prompt()}]}

    async def openai_chat(self) -> str:
        out = await self._post("/openai/v1/chat/completions", self._chat(False))
        return out["choices"][0]["message"]["content"]

    async def openai_chat_stream(self) -> str | None:
        return await self._sse("/openai/v1/chat/completions", self._chat(True),
                               lambda e: e["choices"][0]["delta"].get("content")
                               if e.get("choices") else "")

    async def openai_completions(self) -> str:
        out = await self._post("/openai/v1/completions", {
            "model": self.model, "prompt": self.raw_prompt(),
            "max_tokens": self.args.max_tokens})
        return out["choices"][0]["text"]

    def _params(self) -> dict[str, Any]:
        return {"max_tokens": self.args.max_tokens, "temperature": 0, "apply_chat_template": True}

    async def v2_infer(self) -> str:
        out = await self._post(f"/v2/models/{self.model}/infer", {
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1],
                        "data": [self.prompt()]}], "parameters": self._params()})
        return out["outputs"][0]["data"][0]

    async def generate(self) -> str:
        out = await self._post(f"/v2/models/{self.model}/generate",
                               {"text_input": self.prompt(), "parameters": self._params()})
        return out["text_output"]

    async def generate_stream(self) -> str | None:
        return await self._sse(f"/v2/models/{self.model}/generate_stream",
                               {"text_input": self.prompt(), "parameters": self._params()},
                               lambda e: e.get("text_output"))

    async def grpc_infer(self) -> str:
        tensor = self.grpcclient.InferInput("text_input", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([self.prompt().encode()], dtype=object))
        result = await self.grpc.infer(self.model, [tensor], parameters=self._params(),
                                       client_timeout=self.args.timeout,
                                       headers=self.grpc_headers)
        return result.as_numpy("text_output")[0].decode()


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def sample_process(pid: int) -> dict[str, float]:
    """RSS (MiB) and open FDs of the server and of its descendants, summed and for the root."""
    rss = fds = threads = 0.0
    main_rss = main_fds = 0.0
    for i, proc in enumerate(process_tree(pid)):
        try:
            with proc.oneshot():
                r, f, t = proc.memory_info().rss / 2**20, proc.num_fds(), proc.num_threads()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss, fds, threads = rss + r, fds + f, threads + t
        if i == 0:
            main_rss, main_fds = r, f
    return {"rss_mib": round(rss, 1), "rss_server_mib": round(main_rss, 1),
            "rss_children_mib": round(rss - main_rss, 1), "fds": fds, "fds_server": main_fds,
            "threads": threads, "load1": os.getloadavg()[0]}


async def sampler(args: argparse.Namespace, stats: Stats, rows: list[dict[str, Any]],
                  t_start: float, stop: asyncio.Event) -> None:
    """Every ``--interval`` s: one row of process metrics and the window's median latencies."""
    while True:
        try:
            proc_row = sample_process(args.pid)
        except psutil.NoSuchProcess:
            print("the server process is gone: stopping", flush=True)
            stats.last_error = stats.last_error or "server process exited"
            stop.set()
            return
        row: dict[str, Any] = {"t_s": round(time.monotonic() - t_start, 1), **proc_row}
        for p in PROTOCOLS:
            window, stats.window[p] = stats.window[p], []
            row[f"p50_ms_{p}"] = round(statistics.median(window) * 1000) if window else ""
        row["ok"], row["errors"] = sum(stats.ok.values()), sum(stats.errors.values())
        rows.append(row)
        print(f"[{row['t_s']:7.1f}s] rss {row['rss_mib']:8.1f} MiB (server "
              f"{row['rss_server_mib']:.0f}) fds {row['fds']:4.0f} ok {row['ok']:6d} "
              f"errors {row['errors']} aborted {stats.aborted} load {row['load1']:.1f}",
              flush=True)
        if stop.is_set():
            return
        try:
            await asyncio.wait_for(stop.wait(), args.interval)
        except TimeoutError:
            pass


async def worker(traffic: Traffic, offset: int, deadline: float, stop: asyncio.Event) -> None:
    i = offset
    while time.monotonic() < deadline and not stop.is_set():
        await traffic.one(PROTOCOLS[i % len(PROTOCOLS)])
        i += 1


async def soak(args: argparse.Namespace) -> tuple[list[dict[str, Any]], Stats, float]:
    stats, rows = Stats(), []
    traffic = Traffic(args, stats)
    t_start = time.monotonic()
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(args, stats, rows, t_start, stop))
    deadline = t_start + args.minutes * 60
    try:
        await asyncio.gather(*(worker(traffic, k, deadline, stop)
                               for k in range(args.concurrency)))
    finally:
        await traffic.close()
        if not stop.is_set():
            await asyncio.sleep(args.settle)  # let the engine go idle, then a last sample
        stop.set()
        await sampling
    return rows, stats, time.monotonic() - t_start


def summarize(args: argparse.Namespace, rows: list[dict[str, Any]], stats: Stats,
              elapsed: float) -> dict[str, Any]:
    """Start / after warm-up / end numbers, and the RSS trend after warm-up (least squares)."""
    warm = [r for r in rows if r["t_s"] >= args.warmup] or rows
    t = np.array([r["t_s"] for r in warm]) / 60
    slope = float(np.polyfit(t, [r["rss_mib"] for r in warm], 1)[0]) if len(warm) > 2 else 0.0
    pick = ("rss_mib", "rss_server_mib", "rss_children_mib", "fds", "fds_server", "threads")

    def at(row: dict[str, Any]) -> dict[str, Any]:
        return {"t_s": row["t_s"], **{k: row[k] for k in pick}}

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)) * 1000) if values else None

    return {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "settings": {k: v for k, v in vars(args).items() if k != "api_key"},
        "elapsed_s": round(elapsed, 1),
        "start": at(rows[0]), "after_warmup": at(warm[0]), "end": at(rows[-1]),
        "rss_growth_after_warmup_mib": round(rows[-1]["rss_mib"] - warm[0]["rss_mib"], 1),
        "rss_trend_after_warmup_mib_per_min": round(slope, 2),
        "fds_min_max_after_warmup": [min(r["fds"] for r in warm), max(r["fds"] for r in warm)],
        "requests_ok": stats.ok, "errors": stats.errors, "aborted_on_purpose": stats.aborted,
        "empty_answers": stats.empty,
        "last_error": stats.last_error,
        "latency_ms": {p: {"n": len(v), "p50": pct(v, 50), "p95": pct(v, 95)}
                       for p, v in stats.latencies.items()},
        "load1_mean": round(statistics.mean(r["load1"] for r in rows), 1),
    }


def write_outputs(prefix: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(prefix.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    prefix.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(prefix.with_suffix(".png"), rows, summary)


def plot(path: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Four panels over time: RSS (total, server, engine children), the same relative to the
    end of warm-up (growth is invisible on the absolute scale), FDs, p50 latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60 for r in rows]
    fig, (ax1, ax0, ax2, ax3) = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    ref = summary["after_warmup"]
    for key, label in (("rss_mib", "total (server + engine processes)"),
                       ("rss_server_mib", "server process"),
                       ("rss_children_mib", "engine core + worker")):
        ax1.plot(t, [r[key] for r in rows], label=label)
        ax0.plot(t, [r[key] - ref[key] for r in rows], label=label)
    for ax in (ax1, ax0):
        ax.axvline(summary["settings"]["warmup"] / 60, color="grey", ls=":",
                   label="end of warm-up")
    ax1.set_ylabel("RSS (MiB)")
    ax1.legend(fontsize=8)
    ax0.set_ylabel("RSS change since warm-up (MiB)")
    ax2.plot(t, [r["fds"] for r in rows], label="total")
    ax2.plot(t, [r["fds_server"] for r in rows], label="server process")
    ax2.set_ylabel("open file descriptors")
    ax2.legend(fontsize=8)
    for p in PROTOCOLS:
        pts = [(x, r[f"p50_ms_{p}"]) for x, r in zip(t, rows, strict=True)
               if r[f"p50_ms_{p}"] != ""]
        if pts:
            ax3.plot(*zip(*pts, strict=True), label=p, lw=1)
    ax3.set_ylabel("median latency per window (ms)")
    ax3.set_xlabel("minutes")
    ax3.legend(fontsize=7, ncol=4)
    s = summary["settings"]
    fig.suptitle(f"soak: {s['minutes']} min, concurrency {s['concurrency']}, "
                 f"max_tokens {s['max_tokens']}; RSS after warm-up "
                 f"{summary['rss_trend_after_warmup_mib_per_min']:+.2f} MiB/min")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def start_server(args: argparse.Namespace) -> ServerProcess:
    """``python -m runtime`` on free loopback ports, in its own session; waits for ready."""
    http_port, args.grpc_port = free_port(), free_port()
    args.url = f"http://127.0.0.1:{http_port}"
    argv = runtime_command(model_dir=args.model_dir, model_name=args.model, http_port=http_port,
                           grpc_port=args.grpc_port, extra=args.server_arg)
    if args.tracemalloc:  # same process, same arguments, under scripts/memtrace.py
        argv = [argv[0], str(Path(__file__).with_name("memtrace.py")), "run", "--out",
                args.tracemalloc, "--every", str(args.tracemalloc_every), "--", *argv[3:]]
    server = ServerProcess(
        argv,
        port=http_port, grpc_port=args.grpc_port, name="soak-server",
        log_path=args.server_log, startup_timeout=900, poll_interval=1.0,
        cwd=Path(__file__).resolve().parents[1])
    print("starting:", " ".join(redact_argv(server.argv)), f"(log: {args.server_log})",
          flush=True)
    try:
        return server.start()
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(str(exc)) from exc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080", help="predictor HTTP base URL "
                   "(loopback only)")
    p.add_argument("--grpc-port", type=int, default=8081)
    p.add_argument("--pid", type=int, help="server process id (its descendants are included)")
    p.add_argument("--model", default="smollm2", help="served model name")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=4, help="clients sending at once")
    p.add_argument("--max-tokens", type=int, default=16, help="output tokens per request")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before the 'after "
                   "warm-up' reference point")
    p.add_argument("--abort-fraction", type=float, default=0.1, help="share of streamed "
                   "requests dropped after their first event")
    p.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    p.add_argument("--settle", type=float, default=5.0, help="idle seconds before the last "
                   "sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default=os.environ.get("SOAK_API_KEY"),
                   help="Bearer key, if the server requires one (env SOAK_API_KEY)")
    p.add_argument("--out", default="soak", help="output prefix: PREFIX.csv/.json/.png")
    p.add_argument("--start", action="store_true", help="start `python -m runtime` first "
                   "(and stop it at the end)")
    p.add_argument("--model-dir", default=".models/smollm2", help="with --start")
    p.add_argument("--server-arg", action="append", default=None,
                   help="extra predictor argument with --start (repeatable; "
                   "--max-model-len=2048 is always passed)")
    p.add_argument("--server-log", default=os.path.join(tempfile.gettempdir(),
                                                         "soak-server.log"), help="with --start")
    p.add_argument("--tracemalloc", metavar="DIR", help="with --start: run the server under "
                   "scripts/memtrace.py, tracemalloc snapshots into DIR")
    p.add_argument("--tracemalloc-every", type=float, default=300.0,
                   help="seconds between tracemalloc snapshots")
    args = p.parse_args(argv)
    if args.tracemalloc and not args.start:
        p.error("--tracemalloc needs --start")
    args.server_arg = ["--max-model-len=2048", *(args.server_arg or [])]
    if not args.start and args.pid is None:
        p.error("--pid is required unless --start is given")
    if urlparse(args.url).hostname not in LOOPBACK:
        p.error(f"{args.url}: the soak only targets a server on this machine (loopback)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()  # a SIGTERM still stops the server started with --start
    server = start_server(args) if args.start else None
    if server is not None:
        args.pid = server.pid
    try:
        print(f"soak: {args.minutes} min against {args.url} (gRPC {args.grpc_port}), "
              f"pid {args.pid}, concurrency {args.concurrency}", flush=True)
        rows, stats, elapsed = asyncio.run(soak(args))
    finally:
        if server is not None:
            server.stop(timeout=30)  # the predictor drains in-flight requests first
    summary = summarize(args, rows, stats, elapsed)
    write_outputs(Path(args.out), rows, summary)
    print(json.dumps({k: summary[k] for k in ("start", "after_warmup", "end",
                                               "rss_trend_after_warmup_mib_per_min",
                                               "errors", "requests_ok")}, indent=1))
    print(f"wrote {args.out}.csv, {args.out}.json, {args.out}.png")
    return 1 if sum(stats.errors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
