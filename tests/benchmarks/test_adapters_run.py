"""``python -m benchmarks adapters`` for real: one runtime with the four example adapters,
a tiny load against the base model and spread over the adapters, then the report.

Not a measurement (a few short requests on a shared machine): it shows the command starts the
server with every adapter, that every adapter really answered its share of the requests on
each API (the benchmark client's HTTP, SSE and gRPC paths against the real runtime), that the
adapters change the answer, and that the ratio is the throughputs' ratio.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support.server import run_tool

pytestmark = pytest.mark.slow  # starts the runtime with LoRA enabled
APIS = ("openai-completions", "v2-generate-stream", "v2-grpc")  # SSE, SSE and gRPC paths
PROMPTS = 8


@pytest.fixture(scope="module")
def result(model_dir: str, lora_adapters: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adapters")
    adapters_dir = {p.parent for p in lora_adapters.values()}.pop()
    cmd = [sys.executable, "-m", "benchmarks", "adapters", "--model-dir", model_dir,
           "--adapters", str(adapters_dir), "--api", ",".join(APIS), "--concurrency", "4",
           "--num-prompts", str(PROMPTS), "--input-len", "32", "--output-len", "8",
           "--warmup", "1", "--cooldown", "0.5", "--out", str(out), "--no-progress"]
    proc = run_tool(cmd, timeout=600)
    if proc.returncode != 0:
        for log in sorted((out / "logs").glob("*.log")):
            print(f"--- {log.name} ---\n" + "\n".join(log.read_text().splitlines()[-60:]))
        pytest.fail(f"adapters exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return out


def test_server_loads_every_adapter_and_they_change_the_answer(result: Path) -> None:
    run = json.loads((result / "run.json").read_text())
    [server] = run["servers"].values()
    cmd = " ".join(server["command"])
    assert "--enable-lora" in cmd and "--max-loras=4" in cmd and "--max-lora-rank=8" in cmd
    report = json.loads((result / "adapters.json").read_text())
    answers = report["answers"]
    assert set(answers) == {"smollm2", "attn-a", "mlp-b", "attn-c", "mlp-d"}
    assert report["adapters_answer_like_base"] == []
    assert len(set(answers.values())) == 5, answers


def test_each_adapter_answers_its_share_on_every_api(result: Path) -> None:
    rows = [json.loads(line) for line in (result / "requests.jsonl").read_text().splitlines()]
    assert rows and all(r["success"] for r in rows)
    # The server's count where the API reports one (8 each: ignore_eos); a gRPC answer
    # carries text only, so the client re-tokenizes it (docs/benchmarks.md, "Token counts"),
    # which can differ by a token or two from what was generated.
    for r in rows:
        if r["api"] == "v2-grpc":
            assert r["token_source"] == "tokenizer" and 6 <= r["output_tokens"] <= 10, r
        else:
            assert (r["token_source"], r["output_tokens"]) == ("usage", 8), r
    for api in APIS:
        spread = [r["model"] for r in rows if r["api"] == api and r["target"] == "adapters"]
        assert sorted(spread) == sorted(["attn-a", "attn-c", "mlp-b", "mlp-d"] * 2), api
        assert {r["model"] for r in rows if r["api"] == api and r["target"] == "base"} == \
            {"smollm2"}


def test_ratio_is_adapters_over_base_throughput(result: Path) -> None:
    run = json.loads((result / "run.json").read_text())
    assert run["baseline"] == "base" and run["target"] == "adapters"
    points = {(p["target"], p["api"]): p for p in run["points"]}
    for row in run["comparison"]:
        ratio = (points[("adapters", row["api"])]["output_throughput"]
                 / points[("base", row["api"])]["output_throughput"])
        assert row["output_throughput_ratio"] == pytest.approx(ratio)
        assert 0.05 < ratio < 20  # both targets produced tokens
    text = (result / "adapters.md").read_text()
    assert "ratio adapters/base" in text and (result / "overhead_ratio.png").is_file()
