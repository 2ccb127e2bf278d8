"""``python -m benchmarks.structured_cost`` against the session's real predictor.

Not a measurement (four short requests per side on a shared machine): it shows that the
command the docs give for the JSON-schema cost runs against the runtime end to end (the
constrained load, a new schema, a new bounded repetition) and that its report is made of
its own numbers (the ratio is the two throughputs' ratio, each compile cost is the first
request's time minus the second's)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.support.server import run_tool

pytestmark = pytest.mark.slow


def test_structured_cost_runs_against_the_runtime(predictor) -> None:
    proc = run_tool([sys.executable, "-m", "benchmarks.structured_cost", "--url", predictor.url,
                     "--requests", "4", "--concurrency", "2", "--max-tokens", "16"],
                    timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    plain = report["unconstrained_output_tokens_per_s"]
    constrained = report["json_schema_output_tokens_per_s"]
    assert plain > 0 and constrained > 0
    assert report["ratio"] == pytest.approx(constrained / plain, abs=0.01)
    for first, again, cost in [
            ("new_schema_first_request_s", "same_schema_again_s", "compile_cost_s"),
            ("new_maxLength_schema_first_request_s", "new_maxLength_schema_again_s",
             "maxLength_compile_cost_s")]:
        assert report[first] > 0 and report[again] > 0
        assert report[cost] == pytest.approx(report[first] - report[again], abs=0.002)
