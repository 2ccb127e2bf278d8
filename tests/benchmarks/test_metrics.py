"""Metrics math on synthetic records, checked by hand and against vLLM's own
``calculate_metrics`` (the definitions this package promises to share)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.compare import compare_points, mean_ci
from benchmarks.metrics import is_good, parse_goodput, point_metrics, run_span
from benchmarks.records import RequestRecord


def rec(start: float, ttft: float, itls: list[float], tokens: int, *, ok: bool = True,
        index: int = 0) -> RequestRecord:
    times = [start + ttft]
    for gap in itls:
        times.append(times[-1] + gap)
    return RequestRecord(target="t", api="openai-chat", point="c1", repeat=0, index=index,
                         prompt_index=index, start=start, end=times[-1] if ok else start + 0.5,
                         chunk_times=times if ok else [], prompt_tokens=10,
                         output_tokens=tokens if ok else 0, success=ok,
                         error="" if ok else "HTTP 500: boom", token_source="usage")


def test_single_request_by_hand() -> None:
    r = rec(10.0, 0.2, [0.1, 0.1, 0.3], 4)
    assert r.ttft == pytest.approx(0.2)
    assert r.latency == pytest.approx(0.7)
    assert r.itl == pytest.approx([0.1, 0.1, 0.3])
    assert r.tpot == pytest.approx((0.7 - 0.2) / 3)
    m = point_metrics([r], duration_s=2.0)
    assert m["output_throughput"] == pytest.approx(2.0)
    assert m["request_throughput"] == pytest.approx(0.5)
    assert m["total_token_throughput"] == pytest.approx(7.0)
    assert m["median_ttft_ms"] == pytest.approx(200)
    assert m["median_itl_ms"] == pytest.approx(100)
    assert m["p99_itl_ms"] == pytest.approx(np.percentile([0.1, 0.1, 0.3], 99) * 1000)
    assert m["mean_e2el_ms"] == pytest.approx(700)


def test_failed_requests_are_counted_not_averaged() -> None:
    good = rec(0.0, 0.1, [0.05] * 9, 10)
    bad = rec(0.0, 0.0, [], 0, ok=False, index=1)
    m = point_metrics([good, bad], duration_s=1.0)
    assert (m["requests"], m["completed"], m["failed"]) == (2, 1, 1)
    assert m["median_ttft_ms"] == pytest.approx(100)  # the failure did not drag it to 0
    assert m["total_output_tokens"] == 10
    assert m["errors"] == ["HTTP 500: boom"]


def test_non_streamed_request_has_no_tpot() -> None:
    r = RequestRecord("t", "v2-generate", "c1", 0, 0, 0, start=1.0, end=2.0,
                      chunk_times=[2.0], output_tokens=16, success=True)
    assert r.ttft == pytest.approx(1.0) and r.tpot is None and r.itl == []


def test_goodput() -> None:
    assert parse_goodput(["ttft:500", "tpot:50"]) == {"ttft": 500.0, "tpot": 50.0}
    with pytest.raises(ValueError):
        parse_goodput(["latency:3"])
    fast = rec(0, 0.1, [0.02] * 4, 5)
    slow_first = rec(0, 0.9, [0.02] * 4, 5, index=1)
    slow_decode = rec(0, 0.1, [0.2] * 4, 5, index=2)
    slos = {"ttft": 500.0, "tpot": 50.0}
    assert [is_good(r, slos) for r in (fast, slow_first, slow_decode)] == [True, False, False]
    assert point_metrics([fast, slow_first, slow_decode], 2.0, slos)["goodput"] == 0.5


def test_run_span_includes_failures() -> None:
    assert run_span([rec(1.0, 0.1, [0.1], 2), rec(0.5, 0, [], 0, ok=False)]) == \
        pytest.approx(0.7)


def test_same_numbers_as_vllm_calculate_metrics() -> None:
    """Random synthetic requests: every shared metric equals vLLM's to 1e-9."""
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
    from vllm.benchmarks.serve import calculate_metrics

    rng = np.random.default_rng(7)
    records, outputs = [], []
    for i in range(40):
        ok = i % 9 != 4
        n = int(rng.integers(1, 30))
        itls = list(rng.uniform(0.01, 0.2, n - 1))
        r = rec(float(rng.uniform(0, 5)), float(rng.uniform(0.05, 2)), itls, n, ok=ok, index=i)
        records.append(r)
        outputs.append(RequestFuncOutput(success=ok, latency=r.latency if ok else 0.0,
                                         output_tokens=n if ok else 0, ttft=r.ttft,
                                         itl=r.itl if ok else [], prompt_len=10,
                                         start_time=r.start, error=r.error))
    slos = {"ttft": 1000.0, "tpot": 120.0}
    theirs, _ = calculate_metrics([], outputs, 9.0, None, [90.0, 99.0], slos)
    ours = point_metrics(records, 9.0, slos)
    assert ours["completed"] == theirs.completed and ours["failed"] == theirs.failed
    assert ours["total_output_tokens"] == theirs.total_output
    for name in ("request_throughput", "output_throughput", "total_token_throughput"):
        assert ours[name] == pytest.approx(getattr(theirs, name), rel=1e-9)
    assert ours["goodput"] == pytest.approx(theirs.request_goodput, rel=1e-9)
    for lat in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std"):
            assert ours[f"{stat}_{lat}_ms"] == pytest.approx(
                getattr(theirs, f"{stat}_{lat}_ms"), rel=1e-9), (stat, lat)
        for p, value in getattr(theirs, f"percentiles_{lat}_ms"):
            assert ours[f"p{int(p)}_{lat}_ms"] == pytest.approx(value, rel=1e-9), (p, lat)


def test_mean_ci() -> None:
    assert mean_ci([2.0]) == (2.0, None)
    mean, half = mean_ci([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.3027, sd = 1, n = 3
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)


def _point(target: str, repeat: int, thr: float, ttft: float, *, failed: int = 0) -> dict:
    row = {"target": target, "api": "openai-chat", "point": "c8", "load": 8.0,
           "repeat": repeat, "output_throughput": thr, "request_throughput": thr / 10,
           "failed": failed, "check": {"valid": True}}
    for name in ("median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
                 "p99_tpot_ms", "median_itl_ms", "p99_itl_ms", "median_e2el_ms",
                 "p99_e2el_ms"):
        row[name] = ttft
    return row


def test_compare_pairs_repeats() -> None:
    points = [_point("rt", 0, 99, 110), _point("base", 0, 100, 100),
              _point("rt", 1, 196, 105), _point("base", 1, 200, 100, failed=1)]
    [row] = compare_points(points, "rt", "base")
    assert row["repeats"] == 2
    assert row["output_throughput_ratio"] == pytest.approx((0.99 + 0.98) / 2)
    assert row["median_ttft_ms_diff"] == pytest.approx(7.5)
    assert row["median_ttft_ms_ratio"] == pytest.approx((1.10 + 1.05) / 2)
    assert row["output_throughput_ratio_ci"] is not None
    assert row["valid"] is False  # a failed request anywhere makes the pair invalid
