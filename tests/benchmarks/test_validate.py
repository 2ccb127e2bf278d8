"""``python -m benchmarks.validate`` for real: vLLM's own harness and this client on one plain
vLLM server, with the same prompts.

docs/benchmarks.md's 10% agreement is measured at concurrency 16 with 3 rounds of 128 prompts
on a quiet machine (about 10 minutes); a shared 2-core CI machine cannot hold a small load to
10% reliably (a median TTFT of 12 requests jumps between engine steps; other processes
slow one harness's turn: 2.5x apart in one run here). So it runs both harnesses at once
(``--mode together``: the same machine state for both) and passes
the tolerance explicitly (``TOLERANCE``, wide but meaningful) and holds the tool to its exit
code semantics: 0 exactly when both compared metrics are within it, and both must be. A
client that measured throughput or TTFT differently from vLLM's harness (a wrong token
count, a TTFT taken at the last chunk) fails it; the same-workload checks (identical token
totals) fail when the two harnesses do not send the same requests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support.server import run_tool

pytestmark = pytest.mark.slow  # starts plain vLLM (and vLLM's harness)
PROMPTS = 12
# The tolerance given to the tool (its default, 10%, is for the documented load: see above).
# Run together, this client starts its requests after the harness's are running, so its median
# TTFT is systematically higher at this small load (measured 1.31x and 1.73x here); a client
# that took TTFT at the last chunk measured 7.1x. Throughput is held tighter below.
TOLERANCE = 1.0
THROUGHPUT_BAND = (0.8, 1.25)  # measured 1.010 and 1.021 together, at load average 20


def test_validate_runs_both_harnesses_on_the_same_workload(model_dir: str,
                                                            tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.validate", "--model-dir", model_dir,
           "--concurrency", "4", "--num-prompts", str(PROMPTS), "--input-len", "64",
           "--output-len", "16", "--rounds", "1", "--mode", "together", "--warmup", "1",
           "--tolerance", str(TOLERANCE), "--out", str(tmp_path)]
    proc = run_tool(cmd, timeout=720)
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
    # the tool's verdict is its numbers against the tolerance it was given ...
    agreement = result["agreement"]
    within = {}
    for metric in ("output_throughput", "median_ttft_ms"):
        a = agreement[metric]
        assert a["ours"] == pytest.approx(ours[metric]) and a["vllm"] == pytest.approx(
            vllm[metric]), metric
        assert a["ratio"] == pytest.approx(ours[metric] / vllm[metric]), metric
        within[metric] = abs(a["ratio"] - 1) <= TOLERANCE
        assert a["ok"] is within[metric], metric
        assert f"ratio {a['ratio']:.3f} ({'within' if within[metric] else 'OUTSIDE'} " \
            f"{TOLERANCE:.0%})" in proc.stdout, proc.stdout
    assert agreement["ok"] is all(within.values())
    assert proc.returncode == (0 if agreement["ok"] else 1)
    # ... and the two harnesses agree within it
    assert proc.returncode == 0, {m: agreement[m]["ratio"] for m in within}
    low, high = THROUGHPUT_BAND
    assert low < agreement["output_throughput"]["ratio"] < high, agreement["output_throughput"]
    assert (tmp_path / "ttft_cdf.png").read_bytes()[:4] == b"\x89PNG"
