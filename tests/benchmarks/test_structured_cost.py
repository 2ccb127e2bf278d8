"""``python -m benchmarks.structured_cost`` against the session's real predictor.

Not a measurement (four short requests per load on a shared machine; the figures in
docs/structured-outputs.md are from a quiet machine and are not asserted). What it proves,
each part observed outside the script's own arithmetic:

- the report's request and token counts are the server's: the predictor's own counters
  (``/metrics``) rose by exactly the requests the script says it sent and the output tokens it
  says it received, and each load produced the tokens it asked for;
- the constraint was applied where the report says: every constrained answer is a JSON object
  whose first key is one of its schema's properties, and the unconstrained load's answers are
  not all of that shape (the model answers the same prompt in prose when free to).

What it cannot prove: that the throughput ratio and compile costs are right as measurements.
It checks only that they are the arithmetic of the reported tokens and times (rates are
tokens / seconds, the ratio is their ratio, a compile cost is first minus again), which is
how the script computes them.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.metrics import counters, increase
from tests.support.server import ServerProcess, run_tool

pytestmark = pytest.mark.slow
REQUESTS, MAX_TOKENS = 4, 16
# The warm-up, then two loads, then two schemas timed twice each.
PHASES = {"warm-up": 1, "unconstrained": REQUESTS, "json_schema": REQUESTS, "new_schema": 1,
          "same_schema_again": 1, "new_maxLength_schema": 1, "new_maxLength_schema_again": 1}


def _shaped(answer: dict[str, Any]) -> bool:
    """Whether an answer starts as a JSON object whose first key is one of the properties of
    the schema the request carried (or, unconstrained, of the script's schema)."""
    keys = answer["schema_properties"] or ["city", "celsius", "summary"]
    return re.match(r'\s*\{\s*"(' + "|".join(map(re.escape, keys)) + r')"\s*:',
                    answer["text"]) is not None


def test_structured_cost_report_matches_the_server(predictor: ServerProcess,
                                                   tmp_path: Path) -> None:
    answers_path = tmp_path / "answers.jsonl"
    before = counters(predictor.url)
    proc = run_tool([sys.executable, "-m", "benchmarks.structured_cost", "--url", predictor.url,
                     "--requests", str(REQUESTS), "--concurrency", "2", "--max-tokens",
                     str(MAX_TOKENS), "--answers", str(answers_path)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = increase(before, counters(predictor.url))
    report = json.loads(proc.stdout)
    answers = [json.loads(line) for line in answers_path.read_text().splitlines()]

    # The server's counts are the report's.
    assert report["requests_sent"] == len(answers) == sum(PHASES.values())
    assert served[("kserve_llm_requests", "smollm2", "openai")] == report["requests_sent"]
    assert served[("kserve_llm_generation_tokens", "smollm2", "openai")] == \
        report["output_tokens_received"] == \
        sum(a["completion_tokens"] for a in answers)
    assert {p: sum(a["phase"] == p for a in answers) for p in PHASES} == PHASES
    for phase, key in (("unconstrained", "unconstrained_output_tokens"),
                       ("json_schema", "json_schema_output_tokens")):
        load = [a for a in answers if a["phase"] == phase]
        assert report[key] == sum(a["completion_tokens"] for a in load)
        # ignore_eos: every answer is as long as asked (a grammar that closed early would
        # make the constrained load shorter, and its rate not comparable)
        assert {a["completion_tokens"] for a in load} == {MAX_TOKENS}, load

    # The constraint was on exactly the requests the report calls constrained.
    constrained = [a for a in answers if a["constrained"]]
    assert {a["phase"] for a in answers if not a["constrained"]} == {"unconstrained"}
    assert all(_shaped(a) for a in constrained), [a["text"] for a in constrained]
    free = [a for a in answers if a["phase"] == "unconstrained"]
    assert not all(_shaped(a) for a in free), [a["text"] for a in free]

    # The rest is the report's arithmetic on those numbers (see the module's docstring).
    plain = report["unconstrained_output_tokens"] / report["unconstrained_s"]
    schema = report["json_schema_output_tokens"] / report["json_schema_s"]
    assert report["unconstrained_output_tokens_per_s"] == pytest.approx(plain, abs=0.051)
    assert report["json_schema_output_tokens_per_s"] == pytest.approx(schema, abs=0.051)
    assert report["ratio"] == pytest.approx(schema / plain, abs=0.0011)
    for first, again, cost in [
            ("new_schema_first_request_s", "same_schema_again_s", "compile_cost_s"),
            ("new_maxLength_schema_first_request_s", "new_maxLength_schema_again_s",
             "maxLength_compile_cost_s")]:
        assert report[first] > 0 and report[again] > 0
        assert report[cost] == pytest.approx(report[first] - report[again], abs=0.002)
