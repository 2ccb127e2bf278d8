"""``python -m benchmarks.validate`` for real: vLLM's own harness and this client on one plain
vLLM server, with the same prompts. The 10% agreement itself is measured at a load where
medians are stable (docs/benchmarks.md); here a small load checks that the two harnesses
really ran the same workload and that their numbers are of one kind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support.server import run_tool

pytestmark = pytest.mark.slow  # starts plain vLLM (and vLLM's harness)
PROMPTS = 12


def test_validate_runs_both_harnesses_on_the_same_workload(model_dir: str,
                                                            tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.validate", "--model-dir", model_dir,
           "--concurrency", "4", "--num-prompts", str(PROMPTS), "--input-len", "64",
           "--output-len", "16", "--rounds", "1", "--mode", "turns", "--warmup", "1",
           "--out", str(tmp_path)]
    proc = run_tool(cmd, timeout=720)
    # exit 1 means "outside the tolerance": a result, judged below with a wider margin
    if proc.returncode not in (0, 1) or not (tmp_path / "validate.json").exists():
        for log in sorted(tmp_path.glob("**/*.log")):
            print(f"--- {log.name} ---\n" + "\n".join(log.read_text().splitlines()[-40:]))
        pytest.fail(f"validate exited {proc.returncode}\n{proc.stdout[-2000:]}\n"
                    f"{proc.stderr[-3000:]}")
    result = json.loads((tmp_path / "validate.json").read_text())
    ours, vllm = result["ours"][0], result["vllm"][0]
    for side in (ours, vllm):
        assert side["completed"] == PROMPTS and side["failed"] == 0
    # the same prompts and output lengths: identical token totals on both sides
    assert ours["total_input_tokens"] == vllm["total_input_tokens"] > PROMPTS * 64
    assert ours["total_output_tokens"] == vllm["total_output_tokens"]
    assert len(result["ttfts_s"]["ours"][0]) == len(result["ttfts_s"]["vllm"][0]) == PROMPTS
    ratio = result["agreement"]["output_throughput"]["ratio"]
    assert 0.75 < ratio < 1.33, ratio  # one run, same server: a wide margin
    assert (tmp_path / "ttft_cdf.png").read_bytes()[:4] == b"\x89PNG"
    assert f"ratio {ratio:.3f}" in proc.stdout
