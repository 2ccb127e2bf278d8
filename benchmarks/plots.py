"""PNG plots of a run: latency against throughput, TTFT/ITL CDFs, overhead against load, and
(``--scrape-metrics`` with ``--request-rate``) the server's scaling signals against offered load.

Why these: latency-vs-throughput curves show where each server saturates; CDFs show
whether an overhead is a constant shift or a tail; the ratio plot is the overhead claim
itself, with the goal lines (throughput 0.98, TTFT 1.05) drawn in; the autoscaling curve puts
the gauges an autoscaler reads above the latency users see, at the same offered rates, which
is what choosing a threshold needs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.records import RequestRecord  # noqa: E402


def _mean_by(points: Sequence[dict[str, Any]], api: str, target: str,
             metric: str) -> list[tuple[float, float]]:
    acc: dict[float, list[float]] = defaultdict(list)
    for p in points:
        if p["api"] == api and p["target"] == target:
            acc[p["load"]].append(p[metric])
    return [(load, float(np.mean(v))) for load, v in sorted(acc.items())]


def latency_vs_throughput(points: Sequence[dict[str, Any]], path: Path) -> None:
    """Median TTFT and median TPOT against output throughput, one line per target."""
    apis = sorted({p["api"] for p in points})
    targets = sorted({p["target"] for p in points})
    fig, axes = plt.subplots(len(apis), 2, figsize=(11, 3.6 * len(apis)), squeeze=False)
    for row, api in enumerate(apis):
        for col, metric in enumerate(("median_ttft_ms", "median_tpot_ms")):
            ax = axes[row][col]
            for t in targets:
                thr = _mean_by(points, api, t, "output_throughput")
                lat = _mean_by(points, api, t, metric)
                ax.plot([x for _, x in thr], [y for _, y in lat], marker="o", label=t)
                for (load, x), (_, y) in zip(thr, lat, strict=True):
                    ax.annotate(f"{load:g}", (x, y), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
            ax.set_xlabel("output throughput (tok/s)")
            ax.set_ylabel(metric.replace("_", " "))
            ax.set_title(f"{api}: {metric.split('_')[1].upper()} vs throughput")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cdfs(records: Sequence[RequestRecord], path: Path) -> None:
    """TTFT and ITL CDFs per API at each load, one line per target (successful requests)."""
    ok = [r for r in records if r.success]
    panels = sorted({(r.api, r.point) for r in ok})
    targets = sorted({r.target for r in ok})
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.0 * len(panels)), squeeze=False)
    for row, (api, point) in enumerate(panels):
        for col, name in enumerate(("ttft", "itl")):
            ax = axes[row][col]
            for t in targets:
                sel = [r for r in ok if r.api == api and r.point == point and r.target == t]
                vals = [r.ttft for r in sel] if name == "ttft" else [g for r in sel
                                                                      for g in r.itl]
                if vals:
                    xs = np.sort(np.asarray(vals)) * 1000
                    ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=t)
            ax.set_xlabel(f"{name.upper()} (ms)")
            ax.set_ylabel("fraction")
            ax.set_title(f"{api} {point}: {name.upper()} CDF")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def overhead(comparison: Sequence[dict[str, Any]], target: str, baseline: str,
             path: Path, goals: Sequence[float | None] = (0.98, 1.05)) -> None:
    """Throughput and median-TTFT ratios (target / baseline) against load, with intervals;
    ``goals`` draws a line per panel (None: no goal, e.g. for the adapters comparison)."""
    apis = sorted({r["api"] for r in comparison})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric, goal in ((axes[0], "output_throughput_ratio", goals[0]),
                             (axes[1], "median_ttft_ms_ratio", goals[1])):
        for api in apis:
            rows = sorted((r for r in comparison if r["api"] == api), key=lambda r: r["load"])
            ax.errorbar([r["load"] for r in rows], [r[metric] for r in rows],
                        yerr=[r[f"{metric}_ci"] or 0 for r in rows], marker="o", capsize=3,
                        label=api)
        ax.axhline(1.0, color="grey", lw=0.8)
        if goal is not None:
            ax.axhline(goal, color="red", ls="--", lw=0.8, label=f"goal {goal}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("load (concurrency or req/s)")
        ax.set_title(f"{metric.replace('_', ' ')} ({target} / {baseline})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curve(points: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(rates, mean of ``key`` over repeats) for points that have ``key``; None skipped."""
    acc: dict[float, list[float]] = defaultdict(list)
    for p in points:
        if p.get(key) is not None:
            acc[p["load"]].append(p[key])
    rates = sorted(acc)
    return rates, [float(np.mean(acc[r])) for r in rates]


def autoscaling_curve(points: Sequence[dict[str, Any]], path: Path) -> bool:
    """Top: mean and max waiting requests (vLLM's and the runtime's admitted-waiting) and mean
    KV-cache use; bottom: TTFT p50/p95 and TPOT p50; x = offered request rate. One set of
    lines per target and API; open-loop points with sampled metrics only. False: none."""
    sel = [p for p in points if p.get("load_kind") == "rate" and p.get("metrics_samples")]
    if not sel:
        return False
    groups = sorted({(p["target"], p["api"]) for p in sel})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    kv_ax = top.twinx()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for gi, (target, api) in enumerate(groups):
        mine = [p for p in sel if p["target"] == target and p["api"] == api]
        name = target if len(groups) == 1 or len({g[1] for g in groups}) == 1 \
            else f"{target} {api}"
        c0, c1 = colors[(2 * gi) % len(colors)], colors[(2 * gi + 1) % len(colors)]
        for key, label, color, style in (
                ("waiting_mean", "vLLM waiting mean", c0, "-"),
                ("waiting_max", "vLLM waiting max", c0, "--"),
                ("admitted_waiting_mean", "runtime admitted-waiting mean", c1, "-"),
                ("admitted_waiting_max", "runtime admitted-waiting max", c1, "--")):
            xs, ys = _curve(mine, key)
            if xs:
                top.plot(xs, ys, ls=style, color=color, marker="o", label=f"{name}: {label}")
        xs, ys = _curve(mine, "kv_cache_mean")
        if xs:
            kv_ax.plot(xs, [100 * y for y in ys], ls=":", color=c0, marker="s",
                       label=f"{name}: KV-cache use mean (right axis)")
        for key, label, style in (("median_ttft_ms", "TTFT p50", "-"),
                                  ("p95_ttft_ms", "TTFT p95", "--"),
                                  ("median_tpot_ms", "TPOT p50", ":")):
            xs, ys = _curve(mine, key)
            if xs:
                bottom.plot(xs, ys, ls=style, color=c0, marker="o", label=f"{name}: {label}")
    top.set_ylabel("requests (mean over samples / max)")
    kv_ax.set_ylabel("KV-cache use (%)")
    kv_ax.set_ylim(bottom=0)
    top.set_title("server signals against offered load (sampled /metrics, ~1 s)")
    handles, labels = top.get_legend_handles_labels()
    kv_h, kv_l = kv_ax.get_legend_handles_labels()
    top.legend(handles + kv_h, labels + kv_l, fontsize=7, loc="upper left")
    bottom.set_ylabel("latency (ms, log)")
    bottom.set_yscale("log")
    bottom.set_xlabel("offered request rate (req/s)")
    bottom.set_title("latency the client measured")
    bottom.legend(fontsize=7, loc="upper left")
    rates = sorted({float(p["load"]) for p in sel})
    for ax in (top, bottom):
        ax.set_xscale("log", base=2)
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_plots(out: Path, run: dict[str, Any], records: Sequence[RequestRecord]) -> list[str]:
    """All plots of a run into ``out``; returns the file names written."""
    written = []
    latency_vs_throughput(run["points"], out / "latency_vs_throughput.png")
    written.append("latency_vs_throughput.png")
    cdfs(records, out / "cdf_ttft_itl.png")
    written.append("cdf_ttft_itl.png")
    if run.get("comparison"):
        overhead(run["comparison"], run["target"], run["baseline"], out / "overhead_ratio.png",
                 run.get("plot_goals") or (0.98, 1.05))
        written.append("overhead_ratio.png")
    if autoscaling_curve(run["points"], out / "autoscaling_curve.png"):
        written.append("autoscaling_curve.png")
    return written
