"""``--models``: requests spread over several served names (LoRA adapters) on every API.

A scripted in-process server answers each request with the name it was addressed to (the
OpenAI body's ``model``, the v2 URL's model), and fake gRPC clients do the same with the
``model_name`` they are given, so every record must carry the name the server saw. No model
server needed; runs in seconds. The ``adapters`` subcommand's helpers are checked on folders.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from benchmarks import cli
from benchmarks.adapters import adapter_folders, lora_args, summary
from benchmarks.clients import Sampling, Target
from benchmarks.load import Load, run_point
from benchmarks.runner import RunPlan, run
from benchmarks.workload import Prompt
from tests.support.fake_bench_server import echo_app, serve_in_thread

MODELS = ("attn-a", "mlp-b", "attn-c", "mlp-d")
HTTP_APIS = ["openai-chat", "openai-completions", "v2-generate-stream", "v2-generate",
             "v2-infer"]


@pytest.fixture(scope="module")
def echo_server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    with serve_in_thread(echo_app(seen)) as url:
        yield url, seen


def _words(text: str, add_special_tokens: bool = False) -> SimpleNamespace:
    return SimpleNamespace(input_ids=text.split())


def test_round_robin_and_seeded_random_assignment() -> None:
    t = Target("t", "http://x", "base", models=MODELS)
    assert t.request_models(6, seed=0) == [*MODELS, "attn-a", "mlp-b"]
    r = Target("t", "http://x", "base", models=MODELS, model_order="random")
    draw = r.request_models(200, seed=3)
    assert draw == r.request_models(200, seed=3)  # the seed fixes the draw
    assert draw != r.request_models(200, seed=4)
    assert set(draw) == set(MODELS)  # 200 draws of 4 names: all appear
    assert Target("t", "http://x", "base").request_models(3, seed=0) == ["base"] * 3
    with pytest.raises(ValueError, match="unknown model order"):
        Target("t", "http://x", "base", models=MODELS, model_order="zigzag").request_models(
            2, seed=0)


def test_every_http_api_sends_each_request_to_its_model(
        echo_server: tuple[str, list[str]]) -> None:
    url, seen = echo_server
    seen.clear()
    n = 8
    prompts = [Prompt(f"p{i}", 2, 4) for i in range(n)]
    plan = RunPlan(apis=HTTP_APIS, loads=[Load(concurrency=3)], warmup=0, cooldown_s=0.0)
    sets = {(api, "c3", 0): prompts for api in HTTP_APIS}
    targets = [Target("base", url, "smollm2"), Target("spread", url, "smollm2", models=MODELS)]
    res = run(targets, sets, [], plan, tokenizer=_words, progress=False)
    assert all(r.success for r in res.records), [r.error for r in res.records if r.error]
    for r in res.records:
        assert r.text == r.model, (r.api, r.target, r.text, r.model)  # the server saw r.model
    for api in HTTP_APIS:
        spread = [r for r in res.records if r.api == api and r.target == "spread"]
        assert Counter(r.model for r in spread) == {m: n // len(MODELS) for m in MODELS}
        assert {r.model for r in res.records if r.api == api and r.target == "base"} == \
            {"smollm2"}
    assert Counter(seen) == {"smollm2": n * len(HTTP_APIS),
                             **{m: n // len(MODELS) * len(HTTP_APIS) for m in MODELS}}


class _FakeGrpc:
    """What ``benchmarks.grpc_client`` calls on tritonclient's asyncio client; answers with
    the model name it was given."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def _result(self, model: str) -> Any:
        return SimpleNamespace(
            as_numpy=lambda name: np.array([model.encode()], dtype=np.object_),
            get_response=lambda: SimpleNamespace(parameters={}))

    async def infer(self, model: str, inputs: Any, **kwargs: Any) -> Any:
        self.seen.append(model)
        return self._result(model)

    async def stream_infer(self, requests: AsyncIterator[dict[str, Any]], **kwargs: Any
                           ) -> AsyncIterator[tuple[Any, None]]:
        async for request in requests:
            self.seen.append(request["model_name"])
            yield self._result(request["model_name"]), None


@pytest.mark.parametrize("api", ["v2-grpc", "v2-grpc-stream"])
def test_grpc_sends_each_request_to_its_model(api: str) -> None:
    if "kserve" in sys.modules:  # tritonclient.grpc registers kserve's protobuf package again
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              f"{__file__}::test_grpc_sends_each_request_to_its_model[{api}]"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:]
        return
    from benchmarks.grpc_client import v2_grpc, v2_grpc_stream

    sender = v2_grpc if api == "v2-grpc" else v2_grpc_stream
    client = _FakeGrpc()
    target = Target("spread", "http://x", "smollm2", models=MODELS, model_order="random")
    prompts = [Prompt(f"p{i}", 2, 4) for i in range(12)]
    res = asyncio.run(run_point(sender, client, target, prompts, Sampling(), Load(concurrency=2),
                                api=api, repeat=0, seed=7))
    assert [r.model for r in res.records] == target.request_models(12, seed=7)
    assert all(r.success and r.text == r.model for r in res.records), [r.error for r in res.records][:2]
    assert sorted(client.seen) == sorted(r.model for r in res.records)


def test_cli_flags_reach_the_targets_and_run_json() -> None:
    p = argparse.ArgumentParser()
    cli.add_run_flags(p)
    args = p.parse_args(["--target", "rt=http://127.0.0.1:1", "--tokenizer", "x",
                         "--concurrency", "1", "--out", "/tmp/x", "--models", "a,b",
                         "--model-order", "random"])
    [t] = cli.parse_targets(args)
    assert t.models == ("a", "b") and t.model_order == "random" and t.model == "smollm2"
    cfg = cli.config_dict(args, cli.plan_from(args))
    assert cfg["models"] == ["a", "b"] and cfg["model_order"] == "random"
    args = p.parse_args(["--target", "rt=http://127.0.0.1:1", "--tokenizer", "x",
                         "--concurrency", "1", "--out", "/tmp/x"])
    assert cli.parse_targets(args)[0].models == ()
    with pytest.raises(SystemExit):
        p.parse_args(["--target", "rt=http://h", "--tokenizer", "x", "--concurrency", "1",
                      "--out", "/tmp/x", "--model-order", "zigzag"])


def _adapter(root: Path, name: str, rank: int) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "adapter_config.json").write_text(json.dumps({"r": rank}))
    return root / name


def test_adapters_command_loads_every_adapter_with_the_largest_rank(tmp_path: Path) -> None:
    _adapter(tmp_path, "b", 4)
    _adapter(tmp_path, "a", 8)
    (tmp_path / "not-an-adapter").mkdir()
    found = adapter_folders(tmp_path)
    assert list(found) == ["a", "b"]
    assert lora_args(found) == ["--enable-lora", "--max-lora-rank=8", "--max-loras=2",
                                "--lora-modules", f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}"]
    with pytest.raises(SystemExit, match="no adapter"):
        adapter_folders(tmp_path / "not-an-adapter")


def test_adapters_summary_reports_the_ratio_and_a_useless_adapter() -> None:
    doc = {"comparison": [{"api": "openai-completions", "point": "c8",
                           "base_output_throughput": 100.0,
                           "adapters_output_throughput": 80.0, "output_throughput_ratio": 0.8,
                           "output_throughput_ratio_ci": 0.05, "repeats": 2, "valid": True}],
           "adapters_answer_like_base": ["mlp-d"]}
    text = summary(doc, {"attn-a": 4, "mlp-d": 4})
    assert "| openai-completions | c8 | 100.0 | 80.0 | 0.800 ± 0.050 | 2 | yes |" in text
    assert "WARNING" in text and "mlp-d" in text
