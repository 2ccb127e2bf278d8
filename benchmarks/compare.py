"""Overhead of one target against a baseline, per API and load point, with confidence.

Why per-repeat pairs: targets run interleaved, so repeat r of the runtime and repeat r of
the baseline saw the same machine state; the ratio (throughputs) or difference (latency
percentiles) is taken per pair, and the spread over repeats gives a 95% Student-t interval.
With a single repeat the estimate is reported without an interval, never with a made-up one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from scipy import stats

RATIO_METRICS: tuple[str, ...] = ("output_throughput", "request_throughput",
                                  "median_ttft_ms")
DIFF_METRICS: tuple[str, ...] = ("median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms",
                                 "median_tpot_ms", "p99_tpot_ms", "median_itl_ms",
                                 "p99_itl_ms", "median_e2el_ms", "p99_e2el_ms")


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """Mean and half-width of its ``level`` Student-t interval (None with one value)."""
    n = len(values)
    if n == 0:
        return math.nan, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)


def compare_points(points: Sequence[dict[str, Any]], target: str,
                   baseline: str) -> list[dict[str, Any]]:
    """One row per (API, point): ratios ``target/baseline`` and differences ``target -
    baseline`` with their intervals, the repeats paired, and whether every pair was valid."""
    index = {(p["target"], p["api"], p["point"], p["repeat"]): p for p in points}
    keys = sorted({(p["api"], p["point"], p["load"]) for p in points},
                  key=lambda k: (k[0], k[2]))
    rows = []
    for api, point, load in keys:
        pairs = [(index[(target, api, point, r)], index[(baseline, api, point, r)])
                 for (t, a, pt, r) in index
                 if t == target and a == api and pt == point
                 and (baseline, api, point, r) in index]
        if not pairs:
            continue
        row: dict[str, Any] = {"api": api, "point": point, "load": load, "repeats": len(pairs),
                               "valid": all(x["check"]["valid"] and y["check"]["valid"]
                                            and not x["failed"] and not y["failed"]
                                            for x, y in pairs)}
        for m in RATIO_METRICS:
            ratios = [x[m] / y[m] for x, y in pairs if y[m]]
            row[f"{m}_ratio"], row[f"{m}_ratio_ci"] = mean_ci(ratios)
        for m in DIFF_METRICS:
            row[f"{m}_diff"], row[f"{m}_diff_ci"] = mean_ci([x[m] - y[m] for x, y in pairs])
        for m in ("output_throughput", "median_ttft_ms"):
            row[f"{target}_{m}"] = mean_ci([x[m] for x, _ in pairs])[0]
            row[f"{baseline}_{m}"] = mean_ci([y[m] for _, y in pairs])[0]
        rows.append(row)
    return rows


def fmt_ci(value: float, ci: float | None, digits: int = 3) -> str:
    """``1.012 ± 0.020`` or just ``1.012`` without an interval."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" + ("" if ci is None else f" ± {ci:.{digits}f}")


def comparison_markdown(rows: Sequence[dict[str, Any]], target: str, baseline: str) -> str:
    """The comparison as a Markdown table (the README's results table)."""
    lines = [
        f"| API | load | {target} out tok/s | {baseline} out tok/s | throughput ratio | "
        f"{target} median TTFT ms | {baseline} median TTFT ms | TTFT ratio | "
        "median TPOT diff ms | p99 ITL diff ms | repeats | valid |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['api']} | {r['point']} | {r[f'{target}_output_throughput']:.1f} | "
            f"{r[f'{baseline}_output_throughput']:.1f} | "
            f"{fmt_ci(r['output_throughput_ratio'], r['output_throughput_ratio_ci'])} | "
            f"{r[f'{target}_median_ttft_ms']:.0f} | {r[f'{baseline}_median_ttft_ms']:.0f} | "
            f"{fmt_ci(r['median_ttft_ms_ratio'], r['median_ttft_ms_ratio_ci'])} | "
            f"{fmt_ci(r['median_tpot_ms_diff'], r['median_tpot_ms_diff_ci'], 1)} | "
            f"{fmt_ci(r['p99_itl_ms_diff'], r['p99_itl_ms_diff_ci'], 1)} | {r['repeats']} | "
            f"{'yes' if r['valid'] else 'NO'} |")
    return "\n".join(lines) + "\n"
