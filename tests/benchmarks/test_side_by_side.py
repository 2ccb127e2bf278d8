"""``python -m benchmarks side-by-side``'s own logic with stand-in servers (fast tier): the
order of starts, the settings check, that both servers are stopped whatever happens, that
plain vLLM is sent the OpenAI twin of a v2 API, and that every number of the report is
recomputed from the raw request rows.

Two scripted servers stand in for the engines: "runtime" (OpenAI and the generate
extension) and "vllm" (OpenAI only, like plain vLLM), both streaming at a scripted pace with
server-side usage, recording every request they get. The stand-ins' start writes vLLM's
engine-config log line, which the settings check reads. Whether the runtime costs anything
against plain vLLM is a measurement: it runs on a quiet machine with the commands in
docs/benchmarks.md, not in CI.
"""

from __future__ import annotations

import asyncio
import csv
import json
import statistics
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import benchmarks.__main__ as bench_main
from benchmarks import sidebyside
from benchmarks.compare import mean_ci
from tests.support.fake_bench_server import serve_in_thread
from tests.support.server import DEFAULT_MODEL_DIR

APIS = ("openai-chat", "v2-generate-stream")
LOADS = ("c1", "c2")
PROMPTS, OUT_TOKENS, IN_TOKENS, REPEATS, WARMUP = 4, 6, 16, 2, 1
TTFT_S, GAP_S = 0.03, 0.01  # the scripted pace: first token after 30 ms, then every 10 ms
CONFIG = ("(EngineCore pid=1) INFO [core.py:1] Initializing a V1 LLM engine (v0.32.0) with "
          "config: model='{model}', dtype={dtype}, max_seq_len=2048, enforce_eager=True")


def scripted_app(seen: list[tuple[str, str]], v2: bool) -> web.Application:
    """Streams ``max_tokens`` chunks at the scripted pace, then usage; records (path, prompt)."""
    async def sse(request: web.Request, prompt: str, chunks: list[dict[str, Any]],
                  last: dict[str, Any] | None = None) -> web.StreamResponse:
        seen.append((request.path, prompt))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(TTFT_S)
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(GAP_S)
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if last is not None:  # a trailing event without output (OpenAI's usage chunk)
            await resp.write(f"data: {json.dumps(last)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    def usage(prompt: str, n: int) -> dict[str, Any]:
        return {"prompt_tokens": len(prompt.split()), "completion_tokens": n}

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt, n = body["messages"][-1]["content"], body["max_tokens"]
        return await sse(request, prompt, [{"choices": [{"delta": {"content": " x"}}]}] * n,
                         {"choices": [], "usage": usage(prompt, n)})

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt, n = body["prompt"], body["max_tokens"]
        return await sse(request, prompt, [{"choices": [{"text": " x"}]}] * n,
                         {"choices": [], "usage": usage(prompt, n)})

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt, n = body["text_input"], body["parameters"]["max_tokens"]
        return await sse(request, prompt, [{"text_output": " x"}] * (n - 1)
                         + [{"text_output": " x", **usage(prompt, n)}])

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", ok)
    if v2:
        app.router.add_post("/v2/models/{model}/generate_stream", generate_stream)
        app.router.add_get("/v2/health/ready", ok)
    return app


class StandIn:
    """A started-and-stopped server on a scripted app: logs vLLM's config line on start."""

    def __init__(self, name: str, url: str, log_dir: Path, dtype: str, calls: list[str],
                 fail: bool = False) -> None:
        self.name, self.url, self.calls, self.dtype, self.fail = name, url, calls, dtype, fail
        self.log_path = log_dir / f"{name}.log"
        self.argv = [name, "--stand-in"]
        self.grpc_port: int | None = None
        self.ready_s: float | None = None

    def start(self) -> StandIn:
        self.calls.append(f"start {self.name}")
        if self.fail:
            raise RuntimeError(f"{self.name} exited with 1 during start-up")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text(CONFIG.format(model=DEFAULT_MODEL_DIR, dtype=self.dtype) + "\n"
                                 "INFO [kv_cache_utils.py:1] GPU KV cache size: 46,592 tokens\n")
        self.ready_s = 1.5
        return self

    def stop(self) -> int:
        self.calls.append(f"stop {self.name}")
        return 0


Seen = list[tuple[str, str]]  # (path, prompt) of every request a scripted server got
Servers = dict[str, tuple[str, Seen]]  # name -> (URL, what it saw)
Result = tuple[Path, list[str], dict[str, Seen]]


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    seen: dict[str, list[tuple[str, str]]] = {"runtime": [], "vllm": []}
    with serve_in_thread(scripted_app(seen["runtime"], v2=True)) as rt, \
            serve_in_thread(scripted_app(seen["vllm"], v2=False)) as vl:
        yield {"runtime": (rt, seen["runtime"]), "vllm": (vl, seen["vllm"])}


def side_by_side(servers: Servers, out: Path, monkeypatch: pytest.MonkeyPatch,
                 calls: list[str], *, runtime_dtype: str = "torch.float32",
                 runtime_fails: bool = False, extra: tuple[str, ...] = ()) -> int:
    """``python -m benchmarks side-by-side`` in this process with the stand-ins; its exit
    code. ``calls`` receives the stand-ins' starts and stops in order."""

    def factory(name: str, dtype: str, fail: bool = False) -> Any:
        def make(model_dir: str, served: str, engine_args: list[str], *rest: Any) -> StandIn:
            assert engine_args == ["--dtype=float32", "--enforce-eager"]  # both get the same
            log_dir = next(a for a in rest if isinstance(a, Path))
            return StandIn(name, servers[name][0], log_dir, dtype, calls, fail)
        return make

    monkeypatch.setattr(sidebyside, "vllm_server", factory("vllm", "torch.float32"))
    monkeypatch.setattr(sidebyside, "runtime_server",
                        factory("runtime", runtime_dtype, runtime_fails))
    monkeypatch.setattr(bench_main, "stop_on_sigterm", lambda: None)
    for _, seen in servers.values():
        seen.clear()
    code = bench_main.main([
        "side-by-side", "--model-dir", str(DEFAULT_MODEL_DIR), "--api", ",".join(APIS),
        "--concurrency", "1,2", "--num-prompts", str(PROMPTS), "--input-len", str(IN_TOKENS),
        "--output-len", str(OUT_TOKENS), "--repeats", str(REPEATS), "--warmup", str(WARMUP),
        "--cooldown", "0", "--seed", "1", "--out", str(out), "--no-progress", *extra,
        "--", "--dtype=float32", "--enforce-eager"])
    return code


@pytest.fixture(scope="module")
def result(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Result:
    out = tmp_path_factory.mktemp("side-by-side")
    calls: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        assert side_by_side(servers, out, mp, calls) == 0
    return out, calls, {name: list(seen) for name, (_, seen) in servers.items()}


@pytest.mark.slow  # the command end to end in subprocesses, with scripted servers
def test_each_server_alone_then_both_stopped_files_written(result: Result) -> None:
    out, calls, _ = result
    assert calls == ["start vllm", "start runtime", "stop vllm", "stop runtime"]
    for name in ("run.json", "requests.jsonl", "summary.csv", "summary.md",
                 "latency_vs_throughput.png", "cdf_ttft_itl.png", "overhead_ratio.png"):
        assert (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((out / "run.json").read_text())
    assert set(run["servers"]) == {"runtime", "vllm"}
    for s in run["servers"].values():
        assert s["ready_s"] == 1.5 and s["engine_settings"]["dtype"] == "torch.float32"
        assert s["engine_settings"]["kv_cache_tokens"] == "46592"
    assert run["settings_differences"] == []
    assert "## runtime against vllm" in (out / "summary.md").read_text()


@pytest.mark.slow  # the command end to end in subprocesses, with scripted servers
def test_plain_vllm_is_sent_the_openai_twin_of_a_v2_api(result: Result) -> None:
    """As the servers saw it: plain vLLM got streamed completions for v2-generate-stream, and
    both got the same prompts (each API, point and repeat has its own set, shared)."""
    out, _, seen = result
    run = json.loads((out / "run.json").read_text())
    sent = {(p["target"], p["api"]): p["api_sent"] for p in run["points"]}
    assert sent[("vllm", "v2-generate-stream")] == "openai-completions"
    assert sent[("runtime", "v2-generate-stream")] == "v2-generate-stream"
    per_call = len(LOADS) * REPEATS * PROMPTS + WARMUP
    paths = {name: sorted({p for p, _ in reqs}) for name, reqs in seen.items()}
    assert paths == {"runtime": ["/v1/chat/completions", "/v2/models/smollm2/generate_stream"],
                     "vllm": ["/v1/chat/completions", "/v1/completions"]}
    for name, reqs in seen.items():
        assert len(reqs) == len(APIS) * per_call, name
    assert sorted(p for _, p in seen["runtime"]) == sorted(p for _, p in seen["vllm"])
    # a fresh set per API, point and repeat (the warm-up prompt is the same for every API)
    assert len({p for _, p in seen["runtime"]}) == len(APIS) * (per_call - WARMUP) + WARMUP


@pytest.mark.slow  # the command end to end in subprocesses, with scripted servers
def test_every_number_is_recomputed_from_the_request_rows(result: Result) -> None:
    """Per point: counts and token totals from the rows, a duration that spans the rows, the
    throughputs as totals / duration, median TTFT from the rows; the comparison as the mean
    over paired repeats of those recomputed ratios, with its interval; the scripted pace
    seen in the latencies."""
    out, _, _ = result
    run = json.loads((out / "run.json").read_text())
    rows = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == len(APIS) * len(LOADS) * REPEATS * 2 * PROMPTS
    assert all(r["success"] and r["token_source"] == "usage" for r in rows)
    groups: dict[tuple[str, str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["target"], r["api"], r["point"], r["repeat"])].append(r)
        times = r["chunk_times"]
        assert r["output_tokens"] == len(times) == OUT_TOKENS  # the server's count
        assert times == sorted(times) and r["start"] < times[0] and r["end"] == times[-1]
        assert r["ttft"] >= TTFT_S - 1e-6  # the server waited that long before the first
    recomputed: dict[tuple[str, str, str, int], dict[str, float]] = {}
    assert len(run["points"]) == len(groups)
    for p in run["points"]:
        key = (p["target"], p["api"], p["point"], p["repeat"])
        recs = groups[key]
        assert p["completed"] == len(recs) == PROMPTS and p["failed"] == 0
        tokens = sum(r["output_tokens"] for r in recs)
        assert p["total_output_tokens"] == tokens
        assert p["total_input_tokens"] == sum(r["prompt_tokens"] for r in recs)
        span = max(r["end"] for r in recs) - min(r["start"] for r in recs)
        assert span - 1e-5 <= p["duration_s"] <= span + 0.5
        if p["point"] == "c1":  # one request at a time
            assert p["duration_s"] >= sum(r["latency"] for r in recs) - 1e-4
        recomputed[key] = {"output_throughput": tokens / p["duration_s"],
                           "median_ttft_ms": statistics.median(r["ttft"] for r in recs) * 1000}
        assert p["output_throughput"] == pytest.approx(tokens / p["duration_s"], rel=1e-9)
        assert p["request_throughput"] == pytest.approx(PROMPTS / p["duration_s"], rel=1e-9)
        assert p["median_ttft_ms"] == pytest.approx(recomputed[key]["median_ttft_ms"],
                                                    abs=0.01)  # rows keep 6 decimals
        # TPOT is the scripted gap, whichever the protocol
        assert GAP_S * 1000 * 0.9 <= p["median_tpot_ms"] < GAP_S * 1000 * 5, p
    with (out / "summary.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(run["points"])
    assert {(c["api"], c["point"]) for c in run["comparison"]} == \
        {(a, p) for a in APIS for p in LOADS}
    table = (out / "summary.md").read_text()
    for c in run["comparison"]:
        for metric in ("output_throughput", "median_ttft_ms"):
            pairs = [recomputed[("runtime", c["api"], c["point"], r)][metric]
                     / recomputed[("vllm", c["api"], c["point"], r)][metric]
                     for r in range(REPEATS)]
            mean, half = mean_ci(pairs)
            assert c[f"{metric}_ratio"] == pytest.approx(mean, rel=1e-4), (metric, c)
            # The rows keep times to 1 µs: each recomputed TTFT ratio can be ~1e-4 off, and the
            # interval (t x the spread of 3 pairs) a few times that; a wrong formula is far more.
            assert c[f"{metric}_ratio_ci"] == pytest.approx(half, rel=1e-3, abs=1e-3)
        assert c["repeats"] == REPEATS
        assert f"| {c['api']} | {c['point']} | " \
            f"{c['runtime_output_throughput']:.1f} | {c['vllm_output_throughput']:.1f} | " \
            f"{c['output_throughput_ratio']:.3f} ± {c['output_throughput_ratio_ci']:.3f} |" \
            in table


def test_different_engine_settings_refuse_before_any_load(servers: Servers, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    calls: list[str] = []
    assert side_by_side(servers, tmp_path, monkeypatch, calls,
                        runtime_dtype="torch.bfloat16") == 2
    assert calls == ["start vllm", "start runtime", "stop vllm", "stop runtime"]
    refused = json.loads((tmp_path / "refused.json").read_text())
    assert refused["differences"] == ["dtype: 'torch.bfloat16' != 'torch.float32'"]
    assert not (tmp_path / "run.json").exists()
    assert all(not seen for _, seen in servers.values())  # no request was sent


def test_different_settings_are_recorded_when_allowed(servers: Servers, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert side_by_side(servers, tmp_path, monkeypatch, [], runtime_dtype="torch.bfloat16",
                        extra=("--allow-different-settings", "--no-plots")) == 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["settings_differences"] == ["dtype: 'torch.bfloat16' != 'torch.float32'"]


def test_a_failed_start_stops_both_and_sends_nothing(servers: Servers, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="runtime exited"):
        side_by_side(servers, tmp_path, monkeypatch, calls, runtime_fails=True)
    assert calls == ["start vllm", "start runtime", "stop vllm", "stop runtime"]
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "refused.json").exists()
    assert all(not seen for _, seen in servers.values())
