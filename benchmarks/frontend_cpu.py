"""``python -m benchmarks frontend-cpu``: the serving process's own CPU time per 1000 streamed
tokens, per protocol, against plain vLLM's API server on the same load.

Why this measure: on a CPU host the process in front of the engine takes cores from the
engine; on a GPU host it is what saturates first. Both servers run the same engine code in an
engine-core child process, so what differs is the front end: HTTP, protocol codecs,
detokenization, metrics. Its CPU time (user + system of the server's own pid, every thread,
no child: the engine core is a child) is read with psutil just before and just after each
measured load, and divided by the output tokens the responses' usage reports.

Each server runs alone (the runtime, stopped, then plain vLLM: never two engines at once),
with the same engine arguments, prompts and load; every API is warmed up first, then each
repeat sends ``--requests`` prompts at ``--concurrency`` on every API (the order rotates per
repeat). The report pools the repeats per (server, API) and divides each runtime row by plain
vLLM's completions and chat rows of the same run::

    python -m benchmarks frontend-cpu [--repeats 2 --requests 48 --concurrency 8] \\
        [--no-vllm] [--traced] [--url URL --grpc-url HOST:PORT [--pid PID]] [-- ENGINE ARGS]

``--traced`` adds a second runtime with ``--otlp-traces-endpoint`` between the two
(:mod:`benchmarks.frontend_traced`): the cost of tracing as a ratio of the same run.

With ``--url`` (``--vllm-url``) the server is already running on this machine: its pid is
``--pid`` (``--vllm-pid``) or else the process listening on the URL's port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from benchmarks.cli import prompt_sets
from benchmarks.clients import Sampling, Target
from benchmarks.load import Load, run_point
from benchmarks.metrics import point_metrics
from benchmarks.report import environment
from benchmarks.runner import RunPlan, _Clients, fill_token_counts, probe_target
from benchmarks.servers import runtime_server, server_info, settings_differences, vllm_server
from benchmarks.sidebyside import DEFAULT_ENGINE_ARGS
from benchmarks.workload import Prompt, load_tokenizer
from deployment.processes import free_port

RUNTIME_APIS = ("openai-chat", "openai-completions", "v2-generate-stream", "v2-grpc-stream")
VLLM_APIS = ("openai-chat", "openai-completions")  # plain vLLM's streams: the denominators
LABELS = {"openai-chat": "OpenAI chat (stream)",
          "openai-completions": "OpenAI completions (stream)",
          "v2-generate-stream": "generate_stream (v2 REST)",
          "v2-grpc-stream": "gRPC ModelStreamInfer"}


def front_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` itself: all its threads, none of its
    children (psutil's ``children_*`` fields, which hold children it has waited for, are
    left out, and a live child is never in a process's own times)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def listening_pid(url: str) -> int:
    """The pid of the one process listening on ``url``'s TCP port (on this machine)."""
    port = urlsplit(url).port or (443 if url.startswith("https") else 80)
    pids = {c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    if len(pids) != 1:
        raise SystemExit(f"cannot tell the server process listening on port {port} (found "
                         f"{sorted(pids) or 'none'}): give its pid (--pid / --vllm-pid); "
                         "front-end CPU is measured on this machine only")
    return pids.pop()


def ms_per_1k(cpu_s: float, tokens: int) -> float | None:
    """Milliseconds of CPU per 1000 tokens (None without tokens)."""
    return cpu_s * 1e6 / tokens if tokens > 0 else None


def summarize(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (server, API), repeats pooled: total CPU over total tokens, each repeat's
    own value, and the ratios of every row to plain vLLM's completions and chat rows."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for p in points:
        row = rows.setdefault((p["server"], p["api"]), {
            "server": p["server"], "api": p["api"], "requests": 0, "failed": 0,
            "tokens": 0, "cpu_s": 0.0, "per_repeat_ms": [], "token_sources": []})
        row["requests"] += p["requests"]
        row["failed"] += p["failed"]
        row["tokens"] += p["tokens"]
        row["cpu_s"] += p["cpu_s"]
        row["per_repeat_ms"].append(p["ms_per_1k_tokens"])
        row["token_sources"] = sorted(set(row["token_sources"]) | set(p["token_sources"]))
    for row in rows.values():
        row["ms_per_1k_tokens"] = ms_per_1k(row["cpu_s"], row["tokens"])
    base = {api: rows.get(("vllm", api), {}).get("ms_per_1k_tokens") for api in VLLM_APIS}
    for row in rows.values():
        for api, key in (("openai-completions", "vs_vllm_completions"),
                         ("openai-chat", "vs_vllm_chat")):
            ms, ref = row["ms_per_1k_tokens"], base[api]
            row[key] = ms / ref if ms is not None and ref else None
    return list(rows.values())


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def markdown(doc: dict[str, Any]) -> str:
    """The report: the table, then what it was measured on."""
    cfg = doc["config"]
    lines = [
        "# Front-end CPU per 1000 streamed tokens", "",
        f"The serving process's own CPU time (user + system of its pid, not the engine core's "
        f"child process) per 1000 output tokens (the responses' usage); {cfg['requests']} "
        f"requests of {cfg['output_len']} tokens (prompts of {cfg['input_len']}, ignore_eos) "
        f"at concurrency {cfg['concurrency']}, {cfg['repeats']} repeats pooled (each repeat's "
        "value in brackets). Ratios: this row / plain vLLM's row of the same run.", "",
        "| server | API | ok/failed | tokens | CPU s | ms CPU / 1000 tokens | "
        "vs vLLM completions | vs vLLM chat |", "|---|---|---|---|---|---|---|---|"]
    for r in doc["summary"]:
        each = ", ".join(_fmt(v, ".0f") for v in r["per_repeat_ms"])
        lines.append(
            f"| {r['server']} | {LABELS.get(r['api'], r['api'])} | "
            f"{r['requests'] - r['failed']}/{r['failed']} | {r['tokens']} | "
            f"{r['cpu_s']:.2f} | **{_fmt(r['ms_per_1k_tokens'], '.0f')}** ({each}) | "
            f"{_fmt(r['vs_vllm_completions'], '.2f', 'x')} | "
            f"{_fmt(r['vs_vllm_chat'], '.2f', 'x')} |")
    lines += ["", "| server | how | front-end pid | idle CPU ms/s (between loads) |",
              "|---|---|---|---|"]
    for name, s in doc["servers"].items():
        how = (f"`{' '.join(s['command'])}`" if s.get("command")
               else f"already running at {s['url']}")
        idle = [p["idle_ms_per_s"] for p in doc["points"]
                if p["server"] == name and p["idle_ms_per_s"] is not None]
        lines.append(f"| {name} | {how} | {s['pid']} | "
                     f"{_fmt(sum(idle) / len(idle) if idle else None, '.1f')} |")
    env = doc["environment"]
    lines += ["", f"- Engine arguments: `{' '.join(doc['engine_args'] or [])}`",
              f"- Machine: {env['cpus']} CPUs, load average {env['loadavg']} at start, "
              f"{env['loadavg_end']} at end; commit {env['git_commit'][:12]}; "
              f"versions {env['versions']}",
              f"- Started {doc['started_utc']}, {doc['wall_s']:.0f} s; "
              f"command `{' '.join(env['argv'])}`"]
    if not all(set(r["token_sources"]) <= {"usage"} for r in doc["summary"]):
        lines.append("- WARNING: some responses had no usage; their tokens were counted by "
                     "the tokenizer (token_sources in the JSON)")
    if doc.get("settings_differences"):
        lines.append("- WARNING: the servers' engine settings differ: "
                     + "; ".join(doc["settings_differences"]))
    failed = [p for p in doc["points"] if p["failed"]]
    for p in failed:
        lines.append(f"- FAILED: {p['server']} {p['api']} repeat {p['repeat']}: "
                     f"{p['failed']} requests: {'; '.join(p['errors'])}")
    if doc.get("tracing"):
        from benchmarks.frontend_traced import markdown_section

        lines += markdown_section(doc)
    return "\n".join(lines) + "\n"


async def _measure(target: Target, pid: int, apis: list[str], args: argparse.Namespace,
                   sets: dict[tuple[str, str, int], list[Prompt]], warm: list[Prompt],
                   tokenizer: Any, watch: Any = None) -> list[dict[str, Any]]:
    """Warm every API up, then every repeat of every API: one row per load, with the
    front-end's CPU seconds over it (and, with ``watch``, a ``SpanWatch``, over the export
    of the load's spans)."""
    load = Load(concurrency=args.concurrency)
    plan = RunPlan(apis=apis, loads=[load], repeats=args.repeats, warmup=args.warmup,
                   seed=args.seed, sampling=Sampling(ignore_eos=True),
                   request_timeout_s=args.request_timeout, cooldown_s=args.cooldown)
    await probe_target(target)
    rows: list[dict[str, Any]] = []
    sent = 0
    async with _Clients([target], plan) as clients:
        for api in apis:
            if warm:
                sender, session = clients.sender_for(target, api)
                res = await run_point(sender, session, target, warm, plan.sampling,
                                      Load(concurrency=min(args.concurrency, len(warm))),
                                      api=api, repeat=-1, seed=args.seed)
                bad = [r.error for r in res.records if not r.success]
                print(f"{target.name} {api}: warm-up {len(warm) - len(bad)}/{len(warm)} ok"
                      + (f" ({bad[0]})" if bad else ""), flush=True)
                sent += len(warm)
        if watch is not None:
            await watch.settle(sent)
        for repeat in range(args.repeats):
            k = repeat % len(apis)
            for api in apis[k:] + apis[:k]:
                sender, session = clients.sender_for(target, api)
                idle0, t0 = front_cpu_s(pid), time.perf_counter()
                await asyncio.sleep(args.cooldown)
                idle_s = time.perf_counter() - t0
                if watch is not None:
                    watch.begin()
                cpu0 = front_cpu_s(pid)
                res = await run_point(sender, session, target, sets[(api, load.label, repeat)],
                                      plan.sampling, load, api=api, repeat=repeat,
                                      seed=args.seed * 1000 + repeat)
                sent += len(res.records)
                traced = await watch.settle(sent) if watch is not None else {}
                cpu = front_cpu_s(pid) - cpu0
                fill_token_counts(res.records, tokenizer)
                m = point_metrics(res.records, res.duration_s)
                row = {"server": target.name, "api": api, "repeat": repeat,
                       "requests": m["requests"], "failed": m["failed"],
                       "tokens": m["total_output_tokens"], "cpu_s": cpu,
                       "ms_per_1k_tokens": ms_per_1k(cpu, m["total_output_tokens"]),
                       "duration_s": res.duration_s,
                       "front_cpu_fraction": cpu / res.duration_s,
                       "output_throughput": m["output_throughput"],
                       "idle_ms_per_s": ((cpu0 - idle0) * 1000 / idle_s
                                         if idle_s > 0.2 else None),
                       "token_sources": sorted({r.token_source for r in res.records
                                                if r.success}),
                       "errors": m["errors"], **traced}
                rows.append(row)
                print(f"{target.name} {api} repeat {repeat + 1}/{args.repeats}: "
                      f"{row['requests'] - row['failed']}/{row['requests']} ok, "
                      f"{row['tokens']} tokens in {res.duration_s:.1f} s, front-end CPU "
                      f"{cpu:.2f} s = {_fmt(row['ms_per_1k_tokens'], '.0f')} ms / 1000 "
                      "tokens", flush=True)
    return rows


@contextmanager
def _server(name: str, args: argparse.Namespace, engine_args: list[str], model_dir: str
            ) -> Iterator[tuple[Target, int, dict[str, Any]]]:
    """The target, front-end pid and record of one server: the one at ``--url`` /
    ``--vllm-url``, or one started here (and stopped on the way out)."""
    runtime, tp = name != "vllm", bool(args.traced)
    url = args.url if runtime else args.vllm_url
    model = args.served_model_name
    if url:
        url = url.rstrip("/")
        pid = (args.pid if runtime else args.vllm_pid) or listening_pid(url)
        grpc = args.grpc_url if runtime else None
        print(f"{name}: already running at {url}, front-end pid {pid}", flush=True)
        yield (Target(name, url, model, grpc_url=grpc, api_key=args.api_key, traceparent=tp), pid,
               {"url": url, "grpc_url": grpc, "pid": pid, "started_by_benchmark": False})
        return
    logs, timeout = args.logs / ("traced" if name != "runtime" and runtime else ""), \
        args.startup_timeout
    server = (runtime_server(model_dir, model, engine_args, free_port(), free_port(), logs,
                             timeout) if runtime else
              vllm_server(model_dir, model, engine_args, free_port(), logs, timeout))
    print(f"starting {name}: {' '.join(server.argv)}", flush=True)
    server.start()
    try:
        print(f"{name} ready after {server.ready_s:.1f} s, front-end pid {server.pid}",
              flush=True)
        grpc = f"127.0.0.1:{server.grpc_port}" if server.grpc_port else None
        yield (Target(name, server.url, model, grpc_url=grpc, traceparent=tp), server.pid,
               {**server_info(server), "pid": server.pid, "started_by_benchmark": True})
    finally:
        server.stop()
        print(f"{name} stopped", flush=True)


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", default=".models/smollm2",
                   help="model folder (weights; the tokenizer for the prompts)")
    p.add_argument("--served-model-name", default="smollm2")
    p.add_argument("--api", default=",".join(RUNTIME_APIS),
                   help=f"the runtime's APIs, comma list of: {', '.join(RUNTIME_APIS)} "
                   f"(plain vLLM always runs {' and '.join(VLLM_APIS)})")
    p.add_argument("--requests", type=int, default=48, help="requests per API and repeat")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens")
    p.add_argument("--output-len", type=int, default=64, help="output tokens (ignore_eos)")
    p.add_argument("--warmup", type=int, default=8, help="warm-up requests per API")
    p.add_argument("--cooldown", type=float, default=2.0,
                   help="idle seconds before each measured load (the idle CPU is recorded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument("--no-vllm", action="store_true",
                   help="measure the runtime only (no ratios)")
    p.add_argument("--traced", action="store_true",
                   help="also a runtime with --otlp-traces-endpoint (to a receiver in this "
                   "process): tracing's cost as a ratio; every request carries a traceparent")
    s = p.add_argument_group("servers already running on this machine (nothing is started)")
    s.add_argument("--url", default=None, help="the runtime's HTTP root")
    s.add_argument("--grpc-url", default=None, metavar="HOST:PORT",
                   help="the runtime's gRPC address (for v2-grpc-stream)")
    s.add_argument("--pid", type=int, default=None,
                   help="the runtime's pid (default: the process listening on --url's port)")
    s.add_argument("--vllm-url", default=None, help="plain vLLM's HTTP root")
    s.add_argument("--vllm-pid", type=int, default=None,
                   help="plain vLLM's API server pid (default: the listener of its port)")
    s.add_argument("--api-key", default=None, metavar="KEY",
                   help="sent to servers given by URL as 'Authorization: Bearer KEY'")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=Path("docs/results"),
                   help="folder for NAME.json and NAME.md")
    o.add_argument("--name", default=None, help="file name (default: frontend-cpu-DATE)")
    o.add_argument("--logs", type=Path,
                   default=Path(tempfile.gettempdir()) / "frontend-cpu-logs",
                   help="folder for the servers' logs")


def _check(args: argparse.Namespace, engine_args: list[str]) -> list[str]:
    """The runtime's APIs the flags ask for; SystemExit on what cannot be done."""
    apis = [a.strip() for a in args.api.split(",") if a.strip()]
    unknown = sorted(set(apis) - set(RUNTIME_APIS))
    if unknown or not apis:
        raise SystemExit(f"--api {unknown or args.api!r}: choose from {', '.join(RUNTIME_APIS)}")
    if args.url and "v2-grpc-stream" in apis and not args.grpc_url:
        raise SystemExit("--api v2-grpc-stream against --url needs --grpc-url")
    if engine_args and args.url and (args.vllm_url or args.no_vllm):
        raise SystemExit("engine arguments (after --) are for servers this command starts; "
                         "every server here is already running")
    if args.traced and args.url:
        raise SystemExit("--traced starts its runtimes (tracing is set at start): no --url")
    if args.requests < 1 or args.concurrency < 1 or args.repeats < 1:
        raise SystemExit("--requests, --concurrency and --repeats must be at least 1")
    return apis


def cmd_frontend_cpu(args: argparse.Namespace, engine_args: list[str]) -> int:
    """Measure the runtime, then plain vLLM (each alone); write NAME.json and NAME.md.
    Exit 1 if a request failed, 2 if the two servers' engine settings differ."""
    apis = _check(args, engine_args)
    engine_args = engine_args or list(DEFAULT_ENGINE_ARGS)
    model_dir = str(Path(args.model_dir).resolve())
    tokenizer = load_tokenizer(model_dir)
    every_api = apis + [a for a in VLLM_APIS if a not in apis]
    wanted = argparse.Namespace(num_prompts=[args.requests], dataset="random", dataset_path=None,
                             input_len=args.input_len, output_len=args.output_len,
                             seed=args.seed, random_range_ratio=0.0)
    load = Load(concurrency=args.concurrency)
    sets, warm = prompt_sets(wanted, RunPlan(apis=every_api, loads=[load],
                                             repeats=args.repeats, warmup=args.warmup,
                                             seed=args.seed), tokenizer)
    env = environment()
    started = time.time()
    points: list[dict[str, Any]] = []
    servers: dict[str, dict[str, Any]] = {}
    runs = [("runtime", apis, engine_args), ("vllm", list(VLLM_APIS), engine_args)]
    tr, watch, tracing = None, None, None
    if args.traced:
        from benchmarks import frontend_traced as tr

        watch = tr.SpanWatch(tr.Receiver(keep=False).start())
        runs.insert(1, (tr.TRACED, apis, engine_args + tr.endpoint_args(watch.endpoint)))
    try:
        for name, server_apis, server_args in runs:
            if name == "vllm" and args.no_vllm:
                continue
            with _server(name, args, server_args, model_dir) as (target, pid, info):
                servers[name] = info
                points += asyncio.run(_measure(
                    target, pid, server_apis, args, sets, warm[:args.warmup], tokenizer,
                    watch if tr and name == tr.TRACED else None))
        tracing = watch.record() if watch else None  # after the traced runtime's exit flush
    finally:
        if watch is not None:
            watch.receiver.stop()
    here = {n: s["engine_settings"] for n, s in servers.items() if s["started_by_benchmark"]}
    diffs = (settings_differences(here["runtime"], here["vllm"])
             if {"runtime", "vllm"} <= here.keys() else [])  # a running server's: unknown
    if tr:
        diffs += tr.traced_differences(here["runtime"], here[tr.TRACED])
    env["loadavg_end"] = list(psutil.getloadavg())
    doc = {"config": {"apis": apis, "vllm_apis": [] if args.no_vllm else list(VLLM_APIS),
                      "requests": args.requests, "concurrency": args.concurrency,
                      "repeats": args.repeats, "input_len": args.input_len,
                      "output_len": args.output_len, "ignore_eos": True,
                      "warmup": args.warmup, "cooldown_s": args.cooldown, "seed": args.seed},
           "engine_args": None if args.url and (args.vllm_url or args.no_vllm) else engine_args,
           "environment": env,
           "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
           "wall_s": time.time() - started, "servers": servers,
           "settings_differences": diffs, "points": points, "summary": summarize(points),
           **({"tracing": tracing} if tracing else {})}
    if tr:
        tr.add_ratios(doc["summary"])
    name = args.name or f"frontend-cpu-{time.strftime('%Y-%m-%d', time.gmtime(started))}"
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(doc)
    (args.out / f"{name}.json").write_text(json.dumps(doc, indent=2))
    (args.out / f"{name}.md").write_text(text)
    print(text + f"\nwritten: {args.out / name}.json, .md", flush=True)
    if diffs:
        return 2
    return 0 if all(p["failed"] == 0 for p in points) else 1
