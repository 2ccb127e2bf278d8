"""``--scrape-metrics``: the server's gauges sampled while each load point runs (fast tier).

docs/benchmarks.md ("Server metrics") and docs/autoscaling.md ("The measured curve"): the
benchmark GETs the target's ``/metrics`` about once a second during each point, with the
run's key, sums each series over its label sets, records nothing for a series the server
does not export (plain vLLM has no ``kserve_llm_requests_admitted_waiting``), and writes the
samples, the per-point mean/max and ``autoscaling_curve.png``. Scripted in-process servers
stand in for the runtime and for plain vLLM; no engine.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from benchmarks.clients import Target
from benchmarks.load import Load
from benchmarks.plots import autoscaling_curve, write_plots
from benchmarks.report import summary_markdown
from benchmarks.runner import RunPlan, run
from benchmarks.scrape import aggregate, metrics_markdown, parse_metrics
from benchmarks.workload import Prompt
from deployment.processes import free_port
from tests.benchmarks.test_cli_subcommands import SMALL, cli
from tests.support.fake_bench_server import echo_app, serve_in_thread

KEY = "s3cret"

RUNTIME_TEXT = """\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smollm2"} 3.0
vllm:num_requests_waiting{engine="1",model_name="smollm2"} 2.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2"} 4.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2"} 0.25
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="length"} 7.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.5"} 1.0
vllm:time_to_first_token_seconds_bucket{le="+Inf"} 2.0
vllm:time_to_first_token_seconds_count 2.0
vllm:time_to_first_token_seconds_sum 0.9
# HELP kserve_llm_requests_admitted_waiting Engine requests admitted, not yet in the engine.
# TYPE kserve_llm_requests_admitted_waiting gauge
kserve_llm_requests_admitted_waiting{model="smollm2"} 1.0
"""


def test_parse_sums_label_sets_and_ignores_other_series() -> None:
    assert parse_metrics(RUNTIME_TEXT) == {"waiting": 5.0, "running": 4.0, "kv_cache": 0.25,
                                           "admitted_waiting": 1.0}


def test_parse_leaves_a_series_the_server_lacks_absent() -> None:
    vllm_text = RUNTIME_TEXT.split("# HELP kserve_llm")[0]
    assert "admitted_waiting" not in parse_metrics(vllm_text)
    assert parse_metrics("") == {}
    with pytest.raises(ValueError):
        parse_metrics("this is not an exposition\n")


def test_aggregate_mean_max_and_absent() -> None:
    samples = [{"waiting": 0.0, "running": 1.0, "kv_cache": 0.1, "admitted_waiting": None},
               {"waiting": 4.0, "running": 3.0, "kv_cache": 0.3, "admitted_waiting": None}]
    agg = aggregate(samples, errors=1)
    assert agg["waiting_mean"] == 2.0 and agg["waiting_max"] == 4.0
    assert agg["running_mean"] == 2.0 and agg["kv_cache_max"] == pytest.approx(0.3)
    assert agg["admitted_waiting_mean"] is None and agg["admitted_waiting_max"] is None
    assert agg["metrics_samples"] == 2 and agg["metrics_scrape_errors"] == 1
    empty = aggregate([])
    assert empty["waiting_mean"] is None and empty["metrics_samples"] == 0
    table = metrics_markdown([{"target": "vllm", "api": "openai-chat", "point": "r2",
                               "repeat": 0, **agg}])
    assert "| 2.00/4.00 | - |" in table  # waiting, then the admitted-waiting it lacks


def fake_server(text: str, key: str | None, delay_s: float) -> tuple[web.Application,
                                                                    dict[str, Any]]:
    """The echo server, with chat answers ``delay_s`` late and a ``/metrics`` that serves
    ``text`` (waiting = requests in flight) and answers 401 without ``key``."""
    state: dict[str, Any] = {"in_flight": 0, "scrapes": 0, "auth": set()}
    app = echo_app([])
    app.middlewares.append(_delay(state, delay_s))

    async def metrics(request: web.Request) -> web.Response:
        state["scrapes"] += 1
        state["auth"].add(request.headers.get("Authorization"))
        if key and request.headers.get("Authorization") != f"Bearer {key}":
            return web.Response(status=401, text="no key")
        body = (text.replace('engine="1",model_name="smollm2"} 2.0', 'engine="1"} 0.0')
                .replace("} 3.0", f"}} {float(state['in_flight'])}"))
        return web.Response(text=body, content_type="text/plain")

    app.router.add_get("/metrics", metrics)
    return app, state


def _delay(state: dict[str, Any], delay_s: float) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/v1/chat/completions":
            return await handler(request)
        state["in_flight"] += 1
        try:
            await asyncio.sleep(delay_s)
            return await handler(request)
        finally:
            state["in_flight"] -= 1
    return middleware


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, dict[str, Any], str, dict[str, Any]]]:
    runtime_app, runtime_state = fake_server(RUNTIME_TEXT, KEY, 0.3)
    vllm_app, vllm_state = fake_server(RUNTIME_TEXT.split("# HELP kserve_llm")[0], None, 0.3)
    with serve_in_thread(runtime_app) as runtime_url, serve_in_thread(vllm_app) as vllm_url:
        yield runtime_url, runtime_state, vllm_url, vllm_state


def _words(text: str, add_special_tokens: bool = False) -> SimpleNamespace:
    return SimpleNamespace(input_ids=text.split())


def test_run_samples_each_target_per_point_with_its_key(
        servers: tuple[str, dict[str, Any], str, dict[str, Any]], tmp_path: Path) -> None:
    runtime_url, runtime_state, vllm_url, _ = servers
    prompts = [Prompt(f"p{i}", 2, 4) for i in range(6)]
    plan = RunPlan(apis=["openai-chat"], loads=[Load(rate=20.0), Load(rate=40.0)], warmup=0,
                   cooldown_s=0.0, scrape_metrics=True, scrape_interval_s=0.05)
    sets = {("openai-chat", load.label, 0): prompts for load in plan.loads}
    targets = [Target("runtime", runtime_url, "smollm2", api_key=KEY),
               Target("vllm", vllm_url, "smollm2")]
    res = run(targets, sets, [], plan, tokenizer=_words, progress=False)
    assert all(r.success for r in res.records)
    assert runtime_state["auth"] == {f"Bearer {KEY}"}  # every scrape carried the key
    assert {(p["target"], p["point"]) for p in res.points} == {
        (t, pt) for t in ("runtime", "vllm") for pt in ("r20", "r40")}
    for p in res.points:
        assert p["metrics_scrape_errors"] == 0, p.get("metrics_last_error")
        assert p["metrics_samples"] >= 3  # the point lasts >= 0.3 s, sampled every 0.05 s
        mine = [s for s in res.metrics_samples
                if (s["target"], s["point"], s["repeat"]) == (p["target"], p["point"], 0)]
        assert len(mine) == p["metrics_samples"]
        assert p["waiting_max"] == max(s["waiting"] for s in mine) >= 1  # requests in flight
        assert p["running_mean"] == 4.0 and p["kv_cache_mean"] == 0.25
        if p["target"] == "runtime":
            assert p["admitted_waiting_mean"] == 1.0 and p["admitted_waiting_max"] == 1.0
        else:  # plain vLLM: nothing recorded for the runtime's gauge
            assert p["admitted_waiting_mean"] is None
            assert all(s["admitted_waiting"] is None for s in mine)
    times = [s["time_s"] for s in res.metrics_samples]
    assert times == sorted(times) and times[0] >= 0


def test_a_refused_scrape_is_counted_not_fatal(
        servers: tuple[str, dict[str, Any], str, dict[str, Any]]) -> None:
    runtime_url = servers[0]
    plan = RunPlan(apis=["openai-chat"], loads=[Load(concurrency=2)], warmup=0, cooldown_s=0.0,
                   scrape_metrics=True, scrape_interval_s=0.05)
    sets = {("openai-chat", "c2", 0): [Prompt(f"q{i}", 2, 4) for i in range(4)]}
    res = run([Target("runtime", runtime_url, "smollm2")], sets, [], plan, tokenizer=_words,
              progress=False)  # no key: /metrics answers 401
    (p,) = res.points
    assert p["completed"] == 4 and p["metrics_samples"] == 0
    assert p["metrics_scrape_errors"] >= 1 and "401" in p["metrics_last_error"]
    assert p["waiting_mean"] is None


def _point(target: str, rate: float, waiting: float) -> dict[str, Any]:
    return {"target": target, "api": "openai-chat", "point": f"r{rate:g}", "repeat": 0,
            "load_kind": "rate", "load": rate, "metrics_samples": 5,
            "metrics_scrape_errors": 0, "waiting_mean": waiting, "waiting_max": 2 * waiting,
            "admitted_waiting_mean": None if target == "vllm" else waiting / 2,
            "admitted_waiting_max": None if target == "vllm" else waiting,
            "running_mean": 4.0, "running_max": 4.0, "kv_cache_mean": 0.1 * rate,
            "kv_cache_max": 0.2, "median_ttft_ms": 100 * rate, "p95_ttft_ms": 300 * rate,
            "median_tpot_ms": 50.0, "output_throughput": 60.0 * rate}


def test_plot_is_written_for_a_rate_sweep_with_metrics(tmp_path: Path) -> None:
    points = [_point(t, r, w) for t in ("runtime", "vllm")
              for r, w in ((0.5, 0.0), (1, 0.0), (2, 0.5), (4, 3.0))]
    path = tmp_path / "curve.png"
    assert autoscaling_curve(points, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not autoscaling_curve([{**p, "load_kind": "concurrency"} for p in points],
                                 tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    assert "autoscaling_curve.png" in write_plots(tmp_path, {"points": points}, [])
    assert (tmp_path / "autoscaling_curve.png").exists()
    unsampled = [{**p, "metrics_samples": 0} for p in points]
    (tmp_path / "x").mkdir()
    assert "autoscaling_curve.png" not in write_plots(tmp_path / "x", {"points": unsampled}, [])


@pytest.mark.slow  # the command end to end in a subprocess, with the real tokenizer (~15 s)
def test_cli_writes_samples_columns_summary_and_plot(tmp_path: Path) -> None:
    """``python -m benchmarks run --scrape-metrics --api-key KEY`` as a user types it."""
    app, state = fake_server(RUNTIME_TEXT, KEY, 0.2)
    out = tmp_path / "run"

    async def main() -> subprocess.CompletedProcess[str]:
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            return await asyncio.to_thread(
                cli, "benchmarks", "run", "--target", f"runtime=http://127.0.0.1:{port}",
                "--api-key", KEY, "--request-rate", "4,16", "--num-prompts", "6",
                "--warmup", "0", "--scrape-metrics", "--out", str(out), *SMALL)
        finally:
            await runner.cleanup()

    proc = asyncio.run(main())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert state["auth"] == {f"Bearer {KEY}"}
    with (out / "metrics_samples.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["point"] for r in rows} == {"r4", "r16"}
    assert all(r["admitted_waiting"] == "1.0" and r["kv_cache"] == "0.25" for r in rows)
    with (out / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert all(float(r["kv_cache_mean"]) == 0.25 and r["waiting_max"] for r in summary)
    doc = json.loads((out / "run.json").read_text())
    assert doc["config"]["scrape_metrics"] is True
    assert (out / "autoscaling_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Server metrics while each point ran" in (out / "summary.md").read_text()
    assert "## Server metrics" in summary_markdown(doc)
    assert KEY not in (out / "run.json").read_text()
