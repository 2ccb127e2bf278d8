"""``python -m explainers.benchmark`` against the session's real predictor and explainer.

Not a measurement (one run on a shared machine; docs/explainer.md has the measured table): it
shows that the documented command runs Captum's ``RemoteLLMAttribution`` against the runtime
(its ``VLLMProvider`` on the unprefixed ``/v1`` routes) next to the explainer, and that the two
compute the same attributions, which is what makes their times comparable."""

from __future__ import annotations

import json
import sys

import pytest

from tests.support.server import ServerProcess, run_tool

pytestmark = pytest.mark.slow
WORDS = 10  # the prompt's last 10 words (the documented run explains all 64): a shorter run


def test_benchmark_compares_the_same_attributions(predictor_url: str, explainer: ServerProcess,
                                                  model_dir: str) -> None:
    proc = run_tool([sys.executable, "-m", "explainers.benchmark",
                     "--predictor_url", predictor_url, "--model_dir", model_dir,
                     "--explainer_url", explainer.url, "--repeats", "1",
                     "--words", str(WORDS)], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["features"] == result["words"] == WORDS
    assert result["captum_forward_passes"] == result["features"] + 1
    # 1 baseline + one pass per feature + the deletion test's sets
    assert result["explainer_forward_passes"] > result["features"] + 1
    assert result["max_abs_attr_diff"] < 1e-3, result
    assert result["speedup"] == pytest.approx(
        result["captum_remote_s"] / result["explainer_s"], rel=1e-6)
    assert "speed-up:" in proc.stdout
