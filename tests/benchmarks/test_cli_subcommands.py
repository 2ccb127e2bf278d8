"""``python -m benchmarks run`` / ``compare`` and ``python -m benchmarks.profile`` as a user
types them, against the scripted in-process echo server of ``test_models.py`` (fast tier).

docs/benchmarks.md: "`python -m benchmarks` ... closed or open loop", its output files
(`run.json`, `requests.jsonl`, `summary.csv`, `summary.md` and plots), and its profiles. The CLI
runs in a subprocess; the echo server runs on this process's event loop meanwhile and timestamps
every request it receives, so the open loop's spacing is measured where it matters, at the
server. No model server, no engine.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

import benchmarks.profile as profile
from deployment.processes import free_port
from tests.support.fake_bench_server import echo_app
from tests.support.server import DEFAULT_MODEL_DIR, REPO

# The commands run end to end in subprocesses (about 25 s): the slow tier, which runs
# everything; the fast tier stays under two minutes (issue 21).
pytestmark = pytest.mark.slow

TOKENIZER = str(DEFAULT_MODEL_DIR)
SMALL = ["--tokenizer", TOKENIZER, "--input-len", "16", "--output-len", "4", "--cooldown", "0",
         "--no-progress"]
RUN_FILES = ("run.json", "requests.jsonl", "summary.csv", "summary.md",
             "latency_vs_throughput.png", "cdf_ttft_itl.png", "overhead_ratio.png")


class Arrivals(list):
    """The echo server's record of the model names it was sent, with arrival times."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.perf_counter())
        super().append(item)


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` from the repository root, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)


def run_against_echo(*args: str) -> tuple[subprocess.CompletedProcess[str], Arrivals]:
    """``python -m benchmarks run --target ...`` with ``{url}`` in ``args`` replaced by the
    echo server's URL; the server answers on this event loop while the CLI runs."""
    seen = Arrivals()

    async def main() -> subprocess.CompletedProcess[str]:
        runner = web.AppRunner(echo_app(seen))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            url = f"http://127.0.0.1:{port}"
            return await asyncio.to_thread(
                cli, "benchmarks", "run", *(a.replace("{url}", url) for a in args))
        finally:
            await runner.cleanup()

    return asyncio.run(main()), seen


@pytest.fixture(scope="module")
def two_target_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Arrivals]:
    """The docs' `run` example against two targets (both the echo server), closed loop."""
    out = tmp_path_factory.mktemp("run")
    proc, seen = run_against_echo(
        "--target", "runtime={url}", "--target", "vllm={url}", "--baseline", "vllm",
        "--api", "openai-chat,v2-generate-stream", "--concurrency", "2", "--num-prompts", "4",
        "--repeats", "2", "--warmup", "1", "--goodput", "ttft:500", "tpot:100",
        "--out", str(out), *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## runtime against vllm" in proc.stdout  # it prints summary.md
    return out, seen


def test_run_subcommand_writes_the_documented_files(two_target_run: tuple[Path, Arrivals]
                                                    ) -> None:
    """README: `python -m benchmarks run` writes run.json, requests.jsonl, summary.csv,
    summary.md and plots."""
    out, seen = two_target_run
    for name in RUN_FILES:
        assert (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png.name
    doc = json.loads((out / "run.json").read_text())
    assert (doc["baseline"], doc["target"]) == ("vllm", "runtime")
    assert doc["config"]["goodput_slos_ms"] == {"ttft": 500.0, "tpot": 100.0}
    keys = {(p["target"], p["api"], p["point"], p["repeat"]) for p in doc["points"]}
    assert keys == {(t, a, "c2", r) for t in ("runtime", "vllm")
                    for a in ("openai-chat", "v2-generate-stream") for r in (0, 1)}
    assert all(p["requests"] == 4 and p["failed"] == 0 for p in doc["points"])
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(records) == 16 * 2 and all(r["success"] for r in records)
    with (out / "summary.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(doc["points"])
    # every measured request and one warm-up per target and API reached the server
    assert len(seen) == len(records) + 2 * 2


def test_compare_subcommand_recomputes_the_table(two_target_run: tuple[Path, Arrivals],
                                                 tmp_path: Path) -> None:
    """README: `python -m benchmarks compare` recomputes the overhead table (and plot) from
    finished runs."""
    run_dir, _ = two_target_run
    proc = cli("benchmarks", "compare", str(run_dir), "--target", "runtime", "--baseline",
               "vllm", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "compare.json").read_text())
    assert {(r["api"], r["point"]) for r in rows} == {("openai-chat", "c2"),
                                                      ("v2-generate-stream", "c2")}
    assert all(r["repeats"] == 2 and r["output_throughput_ratio_ci"] is not None for r in rows)
    table = (tmp_path / "compare.md").read_text()
    assert "| API | load | runtime out tok/s | vllm out tok/s |" in table
    assert table.strip() in proc.stdout
    assert (tmp_path / "overhead_ratio.png").read_bytes()[:4] == b"\x89PNG"
    wrong = cli("benchmarks", "compare", str(run_dir), "--baseline", "nobody", "--out",
                str(tmp_path / "x"), timeout=120)
    assert wrong.returncode != 0 and "no load point has both 'runtime' and 'nobody'" in \
        wrong.stderr


def test_open_loop_spaces_requests_at_the_server(tmp_path: Path) -> None:
    """README: "closed or open loop": `--request-rate` spaces the arrivals (the last due at
    n/rate); `inf` sends them all at once."""
    n, rate = 8, 10.0
    proc, seen = run_against_echo(
        "--target", "t={url}", "--api", "openai-chat", "--request-rate", f"{rate:g},inf",
        "--burstiness", "1000", "--num-prompts", str(n), "--warmup", "0", "--no-plots",
        "--out", str(tmp_path), *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(seen.times) == 2 * n
    paced, burst = np.diff(seen.times[:n]), np.diff(seen.times[n:])
    # burstiness 1000: arrivals due every 1/rate = 100 ms. An open loop sends on its schedule:
    # never early; a client stalled by a busy machine sends what fell due at once, so single
    # gaps are not checked, only that no request left before its time and the last on time.
    offsets = np.asarray(seen.times[:n]) - seen.times[0]
    due = np.arange(n) / rate
    assert (offsets >= due - 0.5 / rate).all(), (offsets, due)
    assert paced.sum() == pytest.approx((n - 1) / rate, rel=0.25)
    assert burst.sum() < paced.sum() / 3, (burst, paced)
    doc = json.loads((tmp_path / "run.json").read_text())
    [point] = [p for p in doc["points"] if p["point"] == f"r{rate:g}"]
    assert point["check"]["achieved_rate"] == pytest.approx(rate, rel=0.3)


def test_profile_parses_its_arguments() -> None:
    """docs/benchmarks.md "Profile": `python -m benchmarks.profile --server runtime|vllm
    --model-dir ... --api ... --concurrency ... --num-prompts ... --out ...`."""
    helped = cli("benchmarks.profile", "--help", timeout=120)
    assert helped.returncode == 0, helped.stderr[-2000:]
    for flag in ("--server {runtime,vllm}", "--model-dir", "--api", "--concurrency",
                 "--num-prompts", "--out", "py-spy"):
        assert flag in helped.stdout, flag
    missing = cli("benchmarks.profile", "--server", "runtime", timeout=120)
    assert missing.returncode == 2
    assert "the following arguments are required: --model-dir, --out" in missing.stderr
    bad = cli("benchmarks.profile", "--server", "tgi", "--model-dir", "m", "--out", "o",
              timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'tgi'" in bad.stderr


def test_profile_without_py_spy_fails_before_starting_a_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/benchmarks.md "Profile" needs py-spy (the `bench` extra): without it the command
    says so at once instead of after a server start."""
    def no_server(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("profile started a server before checking for py-spy")

    monkeypatch.setattr(profile, "runtime_server", no_server)
    monkeypatch.setattr(profile, "vllm_server", no_server)
    monkeypatch.setattr(profile, "stop_on_sigterm", lambda: None)
    monkeypatch.setattr(profile.shutil, "which", lambda _name: None)
    monkeypatch.setattr(profile.sys, "executable", str(tmp_path / "bin" / "python"))
    argv = ["--server", "runtime", "--model-dir", TOKENIZER, "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="py-spy not found"):
        profile.main(argv)
    monkeypatch.setattr(profile.shutil, "which", lambda _name: "/bin/true")  # found: go on
    with pytest.raises(AssertionError, match="started a server"):
        profile.main(argv)


def test_profile_shares_categorise_py_spy_samples() -> None:
    """docs/benchmarks.md "Profile": the share of py-spy samples by package (runtime, kserve,
    vLLM, asyncio, ...) and the top leaf frames."""
    raw = "\n".join([
        "main (x.py:1);handle (runtime/pipeline.py:10);write (asyncio/selector_events.py:3) 6",
        "main (x.py:1);predict (kserve/model.py:5) 3",
        "main (x.py:1);serve (vllm/entrypoints/openai/serving_chat.py:9) 1",
        "not a sample line",
    ])
    cats, leaves, total = profile.shares(raw)
    assert total == 10
    assert cats["runtime (this project)"] == pytest.approx(0.6)
    assert cats["asyncio / selectors"] == pytest.approx(0.6)
    assert cats["kserve"] == pytest.approx(0.3)
    assert cats["vllm entrypoints (OpenAI serving)"] == pytest.approx(0.1)
    assert leaves[0] == ("write (asyncio/selector_events.py:3)", pytest.approx(0.6))
