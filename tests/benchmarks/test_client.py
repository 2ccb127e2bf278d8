"""The client against a scripted in-process server: framing, timing, failures, self-checks,
prompts and the engine-settings check. No model server needed; runs in seconds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from benchmarks.clients import Sampling, Target, _sse_messages
from benchmarks.load import Load, PointResult, arrival_offsets, self_check
from benchmarks.records import RequestRecord
from benchmarks.runner import RunPlan, run
from benchmarks.servers import parse_config_line, settings_differences
from benchmarks.workload import (
    Prompt,
    count_tokens,
    jsonl_prompts,
    load_tokenizer,
    random_prompts,
    sharegpt_prompts,
)
from tests.support.fake_bench_server import serve_in_thread
from tests.support.server import DEFAULT_MODEL_DIR

TOKENS = 5
GAP = 0.02
MODEL_DIR = DEFAULT_MODEL_DIR


def _fake_app(fail_every: int) -> web.Application:
    """OpenAI chat and generate_stream that stream TOKENS words GAP s apart; every
    ``fail_every``-th request answers 500 (OpenAI) or an error event (v2)."""
    seen = {"n": 0}

    async def sse(request: web.Request, events: list[dict]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for e in events:
            await asyncio.sleep(GAP)
            await resp.write(f"data: {json.dumps(e)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen["n"] += 1
        if seen["n"] % fail_every == 0:
            return web.json_response({"error": "boom"}, status=500)
        n = body["max_tokens"]
        events: list[dict[str, Any]] = [
            {"choices": [{"delta": {"role": "assistant", "content": ""}}]}]
        events += [{"choices": [{"delta": {"content": " w"}}]} for _ in range(n)]
        events.append({"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": n}})
        return await sse(request, events)

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen["n"] += 1
        n = body["parameters"]["max_tokens"]
        events = [{"text_output": " w"} for _ in range(n)]
        if seen["n"] % fail_every == 0:
            events[2:] = [{"error": "engine died"}]
        return await sse(request, events)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v2/models/m/generate_stream", generate_stream)

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get("/v2/health/ready", ready)
    return app


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with serve_in_thread(_fake_app(fail_every=7)) as url:
        yield url


def test_run_against_scripted_server(fake_url: str) -> None:
    prompts = [Prompt(f"p{i}", 3, TOKENS) for i in range(12)]
    plan = RunPlan(apis=["openai-chat", "v2-generate-stream"], loads=[Load(concurrency=3)],
                   warmup=0, cooldown_s=0.0)
    sets = {(api, "c3", 0): prompts for api in plan.apis}

    def words(text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        return SimpleNamespace(input_ids=text.split())

    res = run([Target("fake", fake_url, "m")], sets, [], plan, tokenizer=words, progress=False)
    by_api = {p["api"]: p for p in res.points}
    chat, v2 = by_api["openai-chat"], by_api["v2-generate-stream"]
    assert chat["requests"] == v2["requests"] == 12
    # requests 7 (chat) and 14, 21 (v2) of the server's count failed; none were dropped
    assert chat["failed"] == 1 and v2["failed"] == 2
    failed = [r for r in res.records if not r.success]
    assert {r.error.split(":")[0] for r in failed} == {"HTTP 500", "error event"}
    for r in res.records:
        if r.api == "openai-chat" and r.success:
            assert r.token_source == "usage" and r.output_tokens == TOKENS
            assert r.prompt_tokens == 30
            # vLLM's harness counts the role-only chunk too: TOKENS + 1 chunks
            assert len(r.chunk_times) == TOKENS + 1 and len(r.itl) == TOKENS
            assert r.ttft >= GAP * 0.9  # the role chunk, one GAP after the start
            assert all(g >= GAP * 0.5 for g in r.itl)
            assert r.text == " w" * TOKENS
        if r.api == "v2-generate-stream" and r.success:  # no usage: counted by tokenizing
            assert r.token_source == "tokenizer" and r.output_tokens == TOKENS
    assert chat["total_output_tokens"] == 11 * TOKENS
    assert chat["output_throughput"] == pytest.approx(
        chat["total_output_tokens"] / chat["duration_s"])
    assert GAP * 900 < chat["median_tpot_ms"] < GAP * 3000
    assert chat["check"]["valid"], chat["check"]


def test_sse_split_keeps_partial_messages() -> None:
    payloads, rest = _sse_messages('data: {"a": 1}\n\ndata: {"b"')
    assert payloads == ['{"a": 1}'] and rest == 'data: {"b"'
    payloads, rest = _sse_messages(rest + ': 2}\r\n\r\n: ping\n\n')
    assert payloads == ['{"b": 2}'] and rest == ""


def test_sampling_params() -> None:
    assert Sampling().params(8) == {"max_tokens": 8, "ignore_eos": True, "temperature": 0.0}
    assert Target("v", "http://x", "m", has_v2=False).api_for("v2-generate-stream") == \
        "openai-completions"


def test_arrival_offsets() -> None:
    poisson = arrival_offsets(2000, rate=4.0, burstiness=1.0, seed=1)
    assert poisson[-1] == pytest.approx(2000 / 4.0)
    assert poisson == arrival_offsets(2000, 4.0, 1.0, seed=1)
    gaps = np.diff(poisson)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.1)  # exponential: CV 1
    smooth = np.diff(arrival_offsets(2000, 4.0, burstiness=4.0, seed=1))
    assert np.std(smooth) / np.mean(smooth) == pytest.approx(0.5, abs=0.08)  # 1/sqrt(k)


def test_self_check_flags_a_saturated_client() -> None:
    recs = [RequestRecord("t", "a", "r10", 0, i, i, scheduled=i * 0.1, start=i * 0.1 + 0.001,
                          end=i * 0.1 + 1) for i in range(20)]
    ok = self_check(PointResult(recs, duration_s=3.0, client_cpu_s=0.3), Load(rate=10.0))
    assert ok["valid"], ok
    late = [RequestRecord("t", "a", "r10", 0, i, i, scheduled=i * 0.1, start=i * 0.3,
                          end=i * 0.3 + 1) for i in range(20)]
    bad = self_check(PointResult(late, duration_s=7.0, client_cpu_s=6.9), Load(rate=10.0))
    assert not bad["valid"]
    text = " ".join(bad["invalid_reasons"])
    assert "client CPU" in text and "dispatch lag" in text and "achieved" in text


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    if not (MODEL_DIR / "tokenizer.json").exists():
        pytest.skip("default model not prepared (make model)")
    return load_tokenizer(MODEL_DIR)


def test_random_prompts_exact_and_reproducible(tokenizer: Any) -> None:
    a = random_prompts(tokenizer, 6, 100, 7, seed=3)
    assert [count_tokens(tokenizer, p.text) for p in a] == [100] * 6
    assert a == random_prompts(tokenizer, 6, 100, 7, seed=3)
    assert a != random_prompts(tokenizer, 6, 100, 7, seed=4)


def test_random_range_ratio_spreads_lengths(tokenizer: Any) -> None:
    got = random_prompts(tokenizer, 40, 100, 60, seed=5, range_ratio=0.5)
    ins = [count_tokens(tokenizer, p.text) for p in got]
    assert ins == [p.input_tokens for p in got]  # each prompt exactly its drawn length
    assert all(50 <= n <= 150 for n in ins) and len(set(ins)) > 10
    outs = [p.output_len for p in got]
    assert all(30 <= n <= 90 for n in outs) and len(set(outs)) > 10
    with pytest.raises(ValueError):
        random_prompts(tokenizer, 1, 10, 10, seed=0, range_ratio=1.0)


def test_jsonl_and_sharegpt(tokenizer: Any, tmp_path: Path) -> None:
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "What is the capital of France?"}\n'
                  '{"text": "Name three colors.", "output_len": 9}\n')
    got = jsonl_prompts(jl, tokenizer, 4, 16, seed=0)
    assert len(got) == 4 and {p.output_len for p in got} == {16, 9}
    sg = tmp_path / "sg.json"
    sg.write_text(json.dumps([
        {"conversations": [{"from": "human", "value": "Tell me about the sea and ships."},
                           {"from": "gpt", "value": "The sea is large and ships sail it."}]},
        {"conversations": [{"from": "human", "value": "Hi"}]},
    ]))
    [p] = sharegpt_prompts(sg, tokenizer, 1, None, seed=0)
    assert p.output_len == count_tokens(tokenizer, "The sea is large and ships sail it.")


CONFIG = ("(EngineCore pid=1) INFO 11-26 [core.py:133] Initializing a V1 LLM engine (v0.32.0) "
          "with config: model='{m}', tokenizer='{m}', dtype=torch.float32, max_seq_len=2048, "
          "enforce_eager={e}, compilation_config={{'mode': 0, 'a': [1, 2]}}, seed=0")


def test_engine_settings_parse_and_compare(tmp_path: Path) -> None:
    a = parse_config_line(CONFIG.format(m=str(tmp_path), e="True"))
    assert a is not None
    assert a["dtype"] == "torch.float32" and a["compilation_config"] == "{'mode': 0, 'a': [1, 2]}"
    assert a["vllm_version"] == "v0.32.0"
    (tmp_path / "x").mkdir()
    # the same folder spelled differently is the same model
    b = parse_config_line(CONFIG.format(m=f"{tmp_path}/x/..", e="True"))
    assert settings_differences(a, b) == []
    c = parse_config_line(CONFIG.format(m=str(tmp_path), e="False"))
    assert settings_differences(a, c) == ["enforce_eager: 'True' != 'False'"]
    assert settings_differences(a, None)
