"""``python -m benchmarks.validate``'s own logic, without an engine (fast tier): the agreement
verdict and its exit code on synthetic rounds, and, on a scripted OpenAI server, that vLLM's
own harness and this client send the same workload and measure it alike.

The agreement itself (this client against ``vllm bench serve`` on a real plain vLLM server) is
a measurement: it runs on a quiet machine with the command in docs/benchmarks.md
("Validation"), not in CI, where a shared 2-core machine cannot hold a small load to 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import benchmarks.validate as validate
from tests.support.fake_bench_server import serve_in_thread
from tests.support.server import DEFAULT_MODEL_DIR, REPO


def _point(throughput: float, ttft_ms: float) -> dict[str, Any]:
    return {"output_throughput": throughput, "median_ttft_ms": ttft_ms, "ttfts": [0.1, 0.2],
            "completed": 4, "failed": 0}


def test_agreement_is_the_mean_ratio_against_the_tolerance() -> None:
    """Means over rounds per harness, their ratio, within tolerance when |ratio - 1| <= it;
    the verdict needs both compared metrics within."""
    mine = [_point(100.0, 200.0), _point(150.0, 300.0)]  # means 125, 250
    vllm = [_point(100.0, 250.0), _point(100.0, 250.0)]  # means 100, 250
    a = validate.agreement(mine, vllm, tolerance=0.25)
    assert a["output_throughput"] == {"ours": 125.0, "vllm": 100.0, "ratio": 1.25, "ok": True}
    assert a["median_ttft_ms"] == {"ours": 250.0, "vllm": 250.0, "ratio": 1.0, "ok": True}
    assert a["ok"] is True  # 1.25 at a tolerance of 0.25: on the edge is within
    b = validate.agreement(mine, vllm, tolerance=0.2)
    assert (b["output_throughput"]["ok"], b["median_ttft_ms"]["ok"], b["ok"]) == \
        (False, True, False)
    low = validate.agreement([_point(100.0, 100.0)], [_point(100.0, 250.0)], tolerance=0.5)
    assert low["median_ttft_ms"]["ratio"] == 0.4 and low["ok"] is False  # too low fails too


class _Server:
    """Stands in for the plain vLLM server ``validate`` starts without ``--url``."""

    def __init__(self) -> None:
        self.url, self.started, self.stopped = "http://127.0.0.1:9", False, False

    def start(self) -> _Server:
        self.started = True
        return self

    def stop(self) -> int:
        self.stopped = True
        return 0


def _main(monkeypatch: pytest.MonkeyPatch, rounds: list[Any], *args: str) -> int:
    """``validate.main`` with the rounds' results given (no harness, no tokenizer)."""
    script = iter(rounds)

    def one_round(a: argparse.Namespace, url: str, r: int, tokenizer: Any, tmp: Path
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
        result = next(script)
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(validate, "one_round", one_round)
    monkeypatch.setattr(validate, "load_tokenizer", lambda path: None)
    monkeypatch.setattr(validate, "stop_on_sigterm", lambda: None)
    return validate.main(["--model-dir", "m", "--rounds", str(len(rounds)), *args])


def test_exit_code_is_the_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """0 exactly when both metrics agree within --tolerance, else 1; the printed and written
    verdicts are the same numbers."""
    rounds: list[Any] = [(_point(105.0, 190.0), _point(100.0, 200.0)),
              (_point(95.0, 230.0), _point(100.0, 200.0))]  # means 100/100, 210/200
    out = tmp_path / "ok"
    assert _main(monkeypatch, rounds, "--url", "http://x", "--tolerance", "0.1",
                 "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "output_throughput: this client 100.00, vLLM harness 100.00, ratio 1.000 " \
        "(within 10%)" in printed
    assert "median_ttft_ms: this client 210.00, vLLM harness 200.00, ratio 1.050 " \
        "(within 10%)" in printed
    doc = json.loads((out / "validate.json").read_text())
    assert doc["agreement"]["ok"] is True
    assert doc["agreement"]["median_ttft_ms"]["ratio"] == pytest.approx(1.05)
    assert [r["output_throughput"] for r in doc["ours"]] == [105.0, 95.0]
    assert doc["ttfts_s"]["ours"] == [[0.1, 0.2], [0.1, 0.2]]
    assert (out / "ttft_cdf.png").read_bytes()[:4] == b"\x89PNG"

    out = tmp_path / "outside"
    assert _main(monkeypatch, rounds, "--url", "http://x", "--tolerance", "0.04",
                 "--out", str(out)) == 1
    assert "ratio 1.050 (OUTSIDE 4%)" in capsys.readouterr().out
    assert json.loads((out / "validate.json").read_text())["agreement"]["ok"] is False


def test_the_server_it_starts_is_stopped_whatever_happens(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Without --url it starts plain vLLM (here a stand-in) and stops it, also when a round
    fails."""
    made: list[_Server] = []
    args_seen: list[list[str]] = []

    def vllm_server(model_dir: str, name: str, engine_args: list[str], *rest: Any) -> _Server:
        args_seen.append(engine_args)
        made.append(_Server())
        return made[-1]

    monkeypatch.setattr(validate, "vllm_server", vllm_server)
    rounds: list[Any] = [(_point(100.0, 200.0), _point(100.0, 200.0))]
    assert _main(monkeypatch, rounds, "--out", str(tmp_path / "a")) == 0
    with pytest.raises(RuntimeError, match="harness exited"):
        _main(monkeypatch, [RuntimeError("vLLM's harness exited with 1")], "--out",
              str(tmp_path / "b"))
    assert [(s.started, s.stopped) for s in made] == [(True, True), (True, True)]
    # no prefix caching: the harness that goes second would find every prompt cached
    assert all("--no-enable-prefix-caching" in a for a in args_seen)


TTFT_S, GAP_S = 0.06, 0.01  # the scripted server: first token after 60 ms, then every 10 ms


@pytest.fixture()
def chat_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """OpenAI chat completions, streamed at a scripted pace with server-side usage; records
    the prompt and the output length asked for of every request, in arrival order."""
    seen: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        content = body["messages"][-1]["content"]
        if isinstance(content, list):  # vLLM's harness sends content parts
            content = "".join(part.get("text", "") for part in content)
        n = int(body.get("max_completion_tokens") or body.get("max_tokens"))
        seen.append({"prompt": content, "output_len": n, "ignore_eos": body.get("ignore_eos"),
                     "t": time.monotonic()})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(TTFT_S)
        for i in range(n):
            if i:
                await asyncio.sleep(GAP_S)
            delta = {"role": "assistant", "content": " x"} if i == 0 else {"content": " x"}
            await resp.write(f"data: {json.dumps({'choices': [{'delta': delta}]})}\n\n".encode())
        usage = {"prompt_tokens": len(content.split()), "completion_tokens": n}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    with serve_in_thread(app) as url:
        yield url, seen


PROMPTS, CONCURRENCY = 12, 4
# Both harnesses should measure the scripted pace alike; the band allows for a busy 2-core
# machine (the server shares this process), while a client that took TTFT at the last chunk
# (about 3x here) or counted other tokens would fall out of it.
TOLERANCE = 0.5


@pytest.mark.slow  # vLLM's harness in a subprocess, then this client (~15 s)
def test_both_harnesses_send_the_same_workload_and_measure_it_alike(
        chat_server: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """vLLM's own harness (``vllm.benchmarks.serve``, in its subprocess) and this client, in
    turns on one scripted server: the server received the same prompts with the same output
    lengths from each, both count the same tokens, and their throughput and median TTFT
    agree within TOLERANCE."""
    url, seen = chat_server
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.validate", "--url", url, "--model-dir",
         str(DEFAULT_MODEL_DIR), "--concurrency", str(CONCURRENCY), "--num-prompts",
         str(PROMPTS), "--input-len", "24", "--output-len", "12", "--warmup", "0",
         "--rounds", "1", "--mode", "turns", "--tolerance", str(TOLERANCE),
         "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = tmp_path / "vllm-0.log"
    assert proc.returncode in (0, 1), (proc.stderr[-3000:],
                                       log.read_text()[-3000:] if log.exists() else "")
    # Round 0 of turns: vLLM's harness first, then this client. (The harness may send one
    # ready-check request first, a copy of its first prompt, depending on its flags.)
    harness, ours = seen[:-PROMPTS], seen[-PROMPTS:]
    assert len(harness) - PROMPTS in (0, 1), len(seen)
    measured = harness[-PROMPTS:]

    def workload(reqs: list[dict[str, Any]]) -> Counter[tuple[str, int]]:
        return Counter((r["prompt"], r["output_len"]) for r in reqs)

    assert workload(measured) == workload(ours)
    assert len({r["output_len"] for r in ours}) > 1  # spread lengths (--random-range-ratio)
    assert all(r["ignore_eos"] for r in seen)
    assert max(r["t"] for r in measured) <= min(r["t"] for r in ours)  # in turns
    result = json.loads((tmp_path / "validate.json").read_text())
    [mine], [theirs] = result["ours"], result["vllm"]
    for side in (mine, theirs):
        assert side["completed"] == PROMPTS and side["failed"] == 0
    assert mine["total_output_tokens"] == theirs["total_output_tokens"] == \
        sum(r["output_len"] for r in ours)
    assert mine["total_input_tokens"] == theirs["total_input_tokens"]
    agreement = result["agreement"]
    assert proc.returncode == 0, agreement
    assert agreement["ok"] is True
    # ... and both saw the scripted pace: a median TTFT of at least the server's delay
    for side in (mine, theirs):
        assert TTFT_S * 1000 <= side["median_ttft_ms"] < TTFT_S * 1000 * 3, side
