"""``python -m benchmarks adapters --url`` for real, against the session's LoRA server
(``lora_server``: the runtime with ``attn-a`` and ``mlp-b`` loaded, keyed with ``LORA_KEY``):
a tiny load against the base model and spread over the two adapters, then the report.

Not a measurement (a few short requests on a shared machine; the measurement is in
docs/benchmarks.md, run on a quiet machine): it shows that the benchmark client's HTTP, SSE
and gRPC paths reach each adapter of a real runtime with its key, that the server itself
counted each adapter's share (its own ``/metrics``), that the adapters change the answer, and
that the report's throughputs and ratio are recomputed exactly from the raw request rows.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LORA_KEY
from tests.support.metrics import counters, increase
from tests.support.server import ServerProcess, run_tool

pytestmark = pytest.mark.slow  # drives the shared LoRA server (a real engine)
# OpenAI's two SSE streams, the generate extension's and gRPC ModelInfer
APIS = ("openai-chat", "openai-completions", "v2-generate-stream", "v2-grpc")
PROTOCOL = {"openai-chat": "openai", "openai-completions": "openai",
            "v2-generate-stream": "v2-generate", "v2-grpc": "v2-grpc"}  # metric label
BASE, ADAPTERS = "smollm2", ("attn-a", "mlp-b")
PROMPTS, OUT_TOKENS, WARMUP = 4, 8, 2  # both even: spread over the two adapters


def _command(server: ServerProcess, model_dir: str, out: Path, *key: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks", "adapters", "--url", server.url,
            "--grpc-url", f"127.0.0.1:{server.grpc_port}", *key,
            "--models", ",".join(ADAPTERS), "--model-dir", model_dir,
            "--api", ",".join(APIS), "--concurrency", "4", "--num-prompts", str(PROMPTS),
            "--input-len", "32", "--output-len", str(OUT_TOKENS), "--warmup", str(WARMUP),
            "--cooldown", "0.5", "--out", str(out), "--no-progress"]


@pytest.fixture(scope="module")
def result(lora_server: ServerProcess, model_dir: str,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Any, float]]:
    """The run's folder and the server's counters' increase over it."""
    out = tmp_path_factory.mktemp("adapters")
    before = counters(lora_server.url)
    proc = run_tool(_command(lora_server, model_dir, out, "--api-key", LORA_KEY), timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"adapters exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return out, increase(before, counters(lora_server.url))


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]


def test_it_drives_the_running_server_and_the_adapters_change_the_answer(
        result: tuple[Path, dict[Any, float]], lora_server: ServerProcess) -> None:
    out, _ = result
    run = json.loads((out / "run.json").read_text())
    [server] = run["servers"].values()
    assert server["url"] == lora_server.url and "command" not in server  # nothing started
    assert server["api_key"] == "(set)" and set(ADAPTERS) <= set(server["adapters_served"])
    assert LORA_KEY not in json.dumps(run)
    report = json.loads((out / "adapters.json").read_text())
    answers = report["answers"]
    assert set(answers) == {BASE, *ADAPTERS}
    assert report["adapters_answer_like_base"] == []
    assert len(set(answers.values())) == 3, answers


def test_without_the_key_the_server_refuses_the_run(lora_server: ServerProcess, model_dir: str,
                                                     tmp_path: Path) -> None:
    """The server requires the key, so the run above got through because the client sent it."""
    proc = run_tool(_command(lora_server, model_dir, tmp_path), timeout=300)
    assert proc.returncode != 0 and "answered 401" in proc.stderr, proc.stderr[-2000:]


def test_each_adapter_answers_its_share_on_every_api(result: tuple[Path, dict[Any, float]]
                                                     ) -> None:
    out, served = result
    rows = _rows(out)
    assert len(rows) == len(APIS) * 2 * PROMPTS and all(r["success"] for r in rows)
    # The server's own count on every API (gRPC: the response's completion_tokens), exactly
    # the tokens asked for (ignore_eos).
    assert {(r["token_source"], r["output_tokens"]) for r in rows} == {("usage", OUT_TOKENS)}
    for api in APIS:
        spread = [r["model"] for r in rows if r["api"] == api and r["target"] == "adapters"]
        assert Counter(spread) == {a: PROMPTS // len(ADAPTERS) for a in ADAPTERS}, api
        assert {r["model"] for r in rows if r["api"] == api and r["target"] == "base"} == {BASE}
    # What the server counted, per model and protocol, over the command: each measured row,
    # the warm-up (WARMUP requests per target and API: the base model, then the adapters in
    # turn) and the greedy check (one OpenAI completion per name).
    for protocol in set(PROTOCOL.values()):
        apis = [api for api in APIS if PROTOCOL[api] == protocol]
        for model in (BASE, *ADAPTERS):
            measured = [r for r in rows if r["api"] in apis and r["model"] == model]
            warm = len(apis) * (WARMUP if model == BASE else WARMUP // len(ADAPTERS))
            greedy = 1 if protocol == "openai" else 0
            assert served[("kserve_llm_requests", model, protocol)] == \
                len(measured) + warm + greedy, (protocol, model)
            if not greedy:  # (the greedy answer may stop at EOS: its length is not known)
                assert served[("kserve_llm_generation_tokens", model, protocol)] == \
                    sum(r["output_tokens"] for r in measured) + warm * OUT_TOKENS, \
                    (protocol, model)


def test_report_is_recomputed_from_the_request_rows(result: tuple[Path, dict[Any, float]]
                                                     ) -> None:
    """Each point's output throughput is its rows' tokens over its recorded wall time (which
    spans its requests), and the ratio is adapters / base of those recomputed numbers; in
    run.json, adapters.json and adapters.md alike."""
    out, _ = result
    run = json.loads((out / "run.json").read_text())
    assert run["baseline"] == "base" and run["target"] == "adapters"
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in _rows(out):
        groups[(r["target"], r["api"])].append(r)
    throughput = {}
    assert len(run["points"]) == len(groups) == 2 * len(APIS)
    for p in run["points"]:
        rows = groups[(p["target"], p["api"])]
        assert p["requests"] == len(rows) == PROMPTS and p["point"] == "c4"
        span = max(r["end"] for r in rows) - min(r["start"] for r in rows)
        assert span - 1e-5 <= p["duration_s"] <= span + 0.5, (p["duration_s"], span)
        tokens = sum(r["output_tokens"] for r in rows if r["success"])
        throughput[(p["target"], p["api"])] = tokens / p["duration_s"]
        assert p["total_output_tokens"] == tokens == PROMPTS * OUT_TOKENS
        assert p["output_throughput"] == pytest.approx(tokens / p["duration_s"], rel=1e-9)
    report = json.loads((out / "adapters.json").read_text())
    assert report["comparison"] == run["comparison"]
    assert {c["api"] for c in run["comparison"]} == set(APIS)
    text = (out / "adapters.md").read_text()
    for c in run["comparison"]:
        base, spread = throughput[("base", c["api"])], throughput[("adapters", c["api"])]
        assert c["repeats"] == 1
        assert c["base_output_throughput"] == pytest.approx(base, rel=1e-9)
        assert c["adapters_output_throughput"] == pytest.approx(spread, rel=1e-9)
        assert c["output_throughput_ratio"] == pytest.approx(spread / base, rel=1e-9)
        assert f"| {c['api']} | c4 | {base:.1f} | {spread:.1f} | {spread / base:.3f} | 1 |" \
            in text, text
    assert (out / "overhead_ratio.png").read_bytes()[:4] == b"\x89PNG"
