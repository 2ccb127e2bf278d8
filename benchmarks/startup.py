"""``startup``: time to ready of this runtime against plain vLLM, same engine arguments.

Why a tool of its own: a side-by-side run starts each server once, one after the other, so
its two times to ready differ by the machine's drift and by what the first start left in
caches (torch.compile's cache serves the second start of a compiled engine). Here each
server is started alone, ``--trials`` times in alternating order, after ``--warmup-starts``
uncounted starts of each (so both find the same caches), and stopped before the next start.
Readiness is what a platform probes: the runtime's ``/v2/health/ready``, vLLM's ``/health``.
Each start's log also gives the engine's own phases (weights, the engine's init), so a
difference can be placed: in the engine (same code on both sides) or in the front end.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

from benchmarks.servers import engine_settings, runtime_server, settings_differences, vllm_server
from benchmarks.sidebyside import DEFAULT_ENGINE_ARGS
from deployment.processes import ServerProcess, free_port

_PHASES = {  # vLLM's own log lines, the same in both servers' logs
    "weights_s": re.compile(r"Loading weights took ([\d.]+) seconds"),
    "engine_init_s": re.compile(r"init engine \(profile, create kv cache, warmup model\) "
                                r"took ([\d.]+) s"),
}


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", required=True, help="model folder (weights and tokenizer)")
    p.add_argument("--served-model-name", default="smollm2")
    p.add_argument("--trials", type=int, default=3, help="counted starts of each server")
    p.add_argument("--warmup-starts", type=int, default=1,
                   help="uncounted starts of each server first (fills shared caches)")
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument("--out", type=Path, required=True, help="folder for startup.json/.md, logs")


def phases(log: Path) -> dict[str, float]:
    """The engine phases a server's log reports (seconds), where present."""
    text = log.read_text(errors="replace") if log.exists() else ""
    found = {}
    for name, pattern in _PHASES.items():
        if m := pattern.search(text):
            found[name] = float(m.group(1))
    return found


def _start(server: ServerProcess) -> dict[str, Any]:
    server.start()
    try:
        assert server.log_path is not None
        return {"server": server.name, "ready_s": server.ready_s, **phases(server.log_path),
                "settings": engine_settings(server.log_path)}
    finally:
        server.stop(timeout=30)


def summarize(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Median time to ready per server and their ratio (runtime / vllm)."""
    def med(name: str, key: str) -> float | None:
        values = [t[key] for t in trials if t["server"] == name and key in t]
        return statistics.median(values) if values else None

    out: dict[str, Any] = {}
    for key in ("ready_s", *_PHASES):
        ours, theirs = med("runtime", key), med("vllm", key)
        out[key] = {"runtime": ours, "vllm": theirs,
                    "ratio": ours / theirs if ours is not None and theirs else None}
    return out


def markdown(summary: dict[str, Any], trials: list[dict[str, Any]], engine_args: list[str]
             ) -> str:
    """The report: medians and ratio, then every start in order."""
    lines = [f"Engine arguments (both): `{' '.join(engine_args)}`", "",
             "| median | runtime s | vllm s | ratio |", "|---|---|---|---|"]
    for key, row in summary.items():
        if row["runtime"] is not None and row["vllm"] is not None:
            lines.append(f"| {key} | {row['runtime']:.1f} | {row['vllm']:.1f} | "
                         f"{row['ratio']:.3f} |")
    lines += ["", "| # | server | ready s | weights s | engine init s |", "|---|---|---|---|---|"]
    for i, t in enumerate(trials, 1):
        lines.append(f"| {i} | {t['server']} | {t['ready_s']:.1f} | "
                     f"{t.get('weights_s', float('nan')):.1f} | "
                     f"{t.get('engine_init_s', float('nan')):.1f} |")
    return "\n".join(lines) + "\n"


def cmd_startup(args: argparse.Namespace, engine_args: list[str]) -> int:
    """Start each server alone, alternately; report the median time to ready and its ratio.
    Exit 2 when the two servers' engine settings differ (the comparison would not be fair)."""
    engine_args = engine_args or list(DEFAULT_ENGINE_ARGS)
    model_dir = str(Path(args.model_dir).resolve())
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    def make(name: str, n: int) -> ServerProcess:
        logs = out / "logs" / f"{n:02d}"
        if name == "vllm":
            return vllm_server(model_dir, args.served_model_name, engine_args, free_port(),
                               logs, args.startup_timeout)
        return runtime_server(model_dir, args.served_model_name, engine_args, free_port(),
                              free_port(), logs, args.startup_timeout)

    trials: list[dict[str, Any]] = []
    total = args.warmup_starts + args.trials
    for n in range(total):
        order = ("vllm", "runtime") if n % 2 == 0 else ("runtime", "vllm")
        for name in order:
            result = _start(make(name, n))
            counted = n >= args.warmup_starts
            print(f"start {n + 1}/{total} {name}: ready after {result['ready_s']:.1f} s"
                  f"{'' if counted else ' (warm-up, not counted)'}", flush=True)
            if counted:
                trials.append(result)
    diffs = settings_differences(trials[0]["settings"], next(
        t["settings"] for t in trials if t["server"] != trials[0]["server"]))
    summary = summarize(trials)
    doc = {"engine_args": engine_args, "trials": trials, "summary": summary,
           "settings_differences": diffs}
    report = markdown(summary, trials, engine_args)
    (out / "startup.json").write_text(json.dumps(doc, indent=2))
    (out / "startup.md").write_text(report)
    print(report)
    if diffs:
        print("the servers' engine settings differ:\n  " + "\n  ".join(diffs))
        return 2
    return 0
