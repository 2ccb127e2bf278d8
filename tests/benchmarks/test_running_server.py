"""The benchmark client against a running server that requires a key, and ``python -m
benchmarks adapters --url`` against one: scripted in-process servers, no engine (fast tier).

The scripted server answers like the runtime where it matters here: every route but health
requires ``Authorization: Bearer KEY`` (401 otherwise), ``/openai/v1/models`` lists the base
model and its LoRA adapters as vLLM's model cards (``parent``: the base model's name), and
each answer names the model it was addressed to. It records the ``Authorization`` header of
every request it receives, so what the client sent is observed at the server.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from aiohttp import web

import benchmarks.__main__ as bench_main
from benchmarks.adapters import greedy_answers, served_adapters
from benchmarks.clients import Sampling, Target
from benchmarks.load import Load, run_point
from benchmarks.report import redact_argv
from benchmarks.runner import RunPlan, run
from benchmarks.workload import Prompt
from tests.support.fake_bench_server import serve_in_thread
from tests.support.server import DEFAULT_MODEL_DIR

KEY = "bench-test-key"
BASE = "smollm2"
ADAPTERS = ("attn-a", "mlp-b")
HTTP_APIS = ["openai-chat", "openai-completions", "v2-generate-stream", "v2-generate",
             "v2-infer"]


class Seen(list):
    """``(method, path, Authorization header or None)`` of every request the server got."""

    def auth(self, prefix: str = "") -> list[str | None]:
        return [a for _, path, a in self if path.startswith(prefix)]


def keyed_app(seen: Seen, key: str = KEY) -> web.Application:
    """A runtime-shaped scripted server: the key on every route but health, model cards with
    ``parent``, answers that name their model, server-side usage on the OpenAI streams."""

    @web.middleware
    async def gate(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append((request.method, request.path, request.headers.get("Authorization")))
        if not request.path.startswith("/v2/health") and \
                request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"error": "unauthorized"}, status=401)
        return await handler(request)

    async def sse(request: web.Request, events: list[dict[str, Any]]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def openai(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model, n = body["model"], int(body.get("max_tokens") or 4)
        chat = request.path.endswith("/chat/completions")
        if not body.get("stream"):  # the adapters command's greedy check
            return web.json_response({"choices": [{"text": f"answer of {model}"}],
                                      "usage": {"completion_tokens": 3, "prompt_tokens": 5}})
        piece: dict[str, Any] = {"delta": {"content": model}} if chat else {"text": model}
        events: list[dict[str, Any]] = [{"choices": [piece]} for _ in range(n)]
        events.append({"choices": [], "usage": {"completion_tokens": n, "prompt_tokens": 7}})
        return await sse(request, events)

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        n = int((await request.json())["parameters"]["max_tokens"])
        model = request.match_info["model"]
        return await sse(request, [{"text_output": model}] * (n - 1)
                         + [{"text_output": model, "completion_tokens": n}])

    async def generate(request: web.Request) -> web.Response:
        return web.json_response({"text_output": request.match_info["model"]})

    async def infer(request: web.Request) -> web.Response:
        return web.json_response({"outputs": [{"name": "text_output", "datatype": "BYTES",
                                               "shape": [1],
                                               "data": [request.match_info["model"]]}]})

    async def models(request: web.Request) -> web.Response:
        cards = [{"id": BASE, "object": "model", "root": "/m", "parent": None}]
        cards += [{"id": a, "object": "model", "root": f"/a/{a}", "parent": BASE}
                  for a in ADAPTERS]
        cards.append({"id": "elsewhere", "object": "model", "root": "/e", "parent": "other"})
        return web.json_response({"object": "list", "data": cards})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application(middlewares=[gate])
    for prefix in ("/openai/v1", "/v1"):
        app.router.add_post(f"{prefix}/completions", openai)
        app.router.add_post(f"{prefix}/chat/completions", openai)
    app.router.add_get("/openai/v1/models", models)
    app.router.add_post("/v2/models/{model}/generate_stream", generate_stream)
    app.router.add_post("/v2/models/{model}/generate", generate)
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    return app


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[tuple[str, Seen]]:
    seen = Seen()
    with serve_in_thread(keyed_app(seen)) as url:
        yield url, seen


def _words(text: str, add_special_tokens: bool = False) -> SimpleNamespace:
    return SimpleNamespace(input_ids=text.split())


def _run_every_http_api(url: str, api_key: str | None) -> list[Any]:
    prompts = [Prompt(f"p{i}", 2, 3) for i in range(3)]
    plan = RunPlan(apis=HTTP_APIS, loads=[Load(concurrency=2)], warmup=1, cooldown_s=0.0)
    target = Target("t", url, BASE, api_key=api_key)
    res = run([target], {(api, "c2", 0): prompts for api in HTTP_APIS}, prompts[:1], plan,
              tokenizer=_words, progress=False)
    assert target.openai_prefix == ("/openai/v1" if api_key else "/v1")  # the probe's answer
    return res.records


def test_every_http_request_carries_the_key_only_when_one_is_given(
        keyed_server: tuple[str, Seen]) -> None:
    """``Target.api_key``: ``Authorization: Bearer KEY`` on the probe, the warm-up and every
    request of every HTTP API, as the server saw them; without a key, no such header."""
    url, seen = keyed_server
    seen.clear()
    records = _run_every_http_api(url, KEY)
    assert len(records) == 3 * len(HTTP_APIS)
    assert all(r.success for r in records), [r.error for r in records if r.error][:3]
    # every request: the probe (2 GETs), then warm-up and 3 measured per API
    assert len(seen) == 2 + 4 * len(HTTP_APIS)
    assert set(seen.auth()) == {f"Bearer {KEY}"}, seen
    assert {p for m, p, _ in seen if m == "POST"} >= {
        "/openai/v1/chat/completions", "/openai/v1/completions",
        f"/v2/models/{BASE}/generate_stream", f"/v2/models/{BASE}/generate",
        f"/v2/models/{BASE}/infer"}

    seen.clear()
    records = _run_every_http_api(url, None)
    assert len(seen) == 2 + 4 * len(HTTP_APIS)
    assert set(seen.auth()) == {None}, seen
    # (so the keyed server refused every one but health: the client reports, not hides, it)
    assert all(not r.success and r.error.startswith("HTTP 401") for r in records)


def test_the_key_never_reaches_the_results() -> None:
    assert redact_argv(["x", "--api-key", "k1", "--api-key=k2", "--url", "u"]) == \
        ["x", "--api-key", "***", "--api-key=***", "--url", "u"]
    described = Target("t", "http://x", BASE, api_key="k1").describe()
    assert described["api_key"] == "(set)" and "k1" not in json.dumps(described)
    assert "k1" not in repr(Target("t", "http://x", BASE, api_key="k1"))
    assert Target("t", "http://x", BASE).describe()["api_key"] is None


class _RecordingGrpc:
    """What ``benchmarks.grpc_client`` calls on tritonclient's asyncio client; keeps the
    ``headers`` (gRPC metadata) of every call and answers with the ``completion_tokens``
    parameter as the runtime does."""

    def __init__(self) -> None:
        self.headers: list[Any] = []

    def _result(self, model: str) -> Any:
        count = SimpleNamespace(WhichOneof=lambda _: "int64_param", int64_param=4)
        final = SimpleNamespace(WhichOneof=lambda _: "bool_param", bool_param=True)
        return SimpleNamespace(
            as_numpy=lambda name: np.array([model.encode()], dtype=np.object_),
            get_response=lambda: SimpleNamespace(parameters={
                "completion_tokens": count, "triton_final_response": final}))

    async def infer(self, model: str, inputs: Any, headers: Any = None, **kwargs: Any) -> Any:
        self.headers.append(headers)
        return self._result(model)

    async def stream_infer(self, requests: AsyncIterator[dict[str, Any]], headers: Any = None
                           ) -> AsyncIterator[tuple[Any, None]]:
        self.headers.append(headers)
        async for request in requests:
            yield self._result(request["model_name"]), None


@pytest.mark.parametrize("api", ["v2-grpc", "v2-grpc-stream"])
def test_grpc_calls_carry_the_key_as_authorization_metadata(api: str) -> None:
    """``Target.api_key`` on gRPC: the ``authorization`` metadata on every call (ModelInfer,
    ModelStreamInfer), none without a key; the server's ``completion_tokens`` is the count."""
    if "kserve" in sys.modules:  # tritonclient.grpc registers kserve's protobuf package again
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"{__file__}::test_grpc_calls_carry_the_key_as_authorization_metadata[{api}]"],
            capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:]
        return
    from benchmarks.grpc_client import v2_grpc, v2_grpc_stream

    sender = v2_grpc if api == "v2-grpc" else v2_grpc_stream
    prompts = [Prompt(f"p{i}", 2, 4) for i in range(4)]
    for key, expected in ((KEY, {"authorization": f"Bearer {KEY}"}), (None, None)):
        client = _RecordingGrpc()
        res = asyncio.run(run_point(sender, client, Target("t", "http://x", BASE, api_key=key),
                                    prompts, Sampling(), Load(concurrency=2), api=api,
                                    repeat=0, seed=0))
        assert all(r.success for r in res.records), [r.error for r in res.records]
        assert client.headers == [expected] * len(prompts)
        assert {(r.token_source, r.output_tokens) for r in res.records} == {("usage", 4)}


def test_greedy_check_and_adapter_discovery_send_the_key(keyed_server: tuple[str, Seen]
                                                         ) -> None:
    url, seen = keyed_server
    seen.clear()
    assert served_adapters(url, BASE, KEY) == list(ADAPTERS)  # not "elsewhere", not the base
    assert greedy_answers(url, [BASE, "attn-a"], api_key=KEY) == {
        BASE: f"answer of {BASE}", "attn-a": "answer of attn-a"}
    assert seen.auth() == [f"Bearer {KEY}"] * 3
    seen.clear()
    with pytest.raises(SystemExit, match="answered 401"):
        served_adapters(url, BASE)
    with pytest.raises(httpx.HTTPStatusError):
        greedy_answers(url, [BASE])
    assert seen.auth() == [None, None]


def _adapters_url(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """``python -m benchmarks adapters --url ...`` in this process (the fast tier's guard
    fails the test if it starts a server), small and quick."""
    monkeypatch.setattr(bench_main, "stop_on_sigterm", lambda: None)
    return bench_main.main([
        "adapters", "--model-dir", str(DEFAULT_MODEL_DIR), "--concurrency", "2",
        "--num-prompts", "4", "--input-len", "8", "--output-len", "3", "--warmup", "2",
        "--cooldown", "0", "--no-progress", "--no-plots", *args])


def test_adapters_against_a_running_server(keyed_server: tuple[str, Seen], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``adapters --url --api-key``: no server started; the adapters are those the server
    lists under the base model; every request carries the key; the report records the URL,
    not a command, and nowhere the key."""
    url, seen = keyed_server
    seen.clear()
    out = tmp_path / "out"
    code = _adapters_url(monkeypatch, "--url", url + "/", "--api-key", KEY,
                         "--api", "openai-completions,v2-generate-stream", "--out", str(out))
    assert code == 0
    assert set(seen.auth()) == {f"Bearer {KEY}"}
    run_doc = json.loads((out / "run.json").read_text())
    assert run_doc["servers"] == {"runtime": {
        "url": url, "grpc_url": None, "started_by_benchmark": False, "api_key": "(set)",
        "adapters_served": list(ADAPTERS)}}
    assert run_doc["config"]["models"] == list(ADAPTERS) and run_doc["engine_args"] is None
    assert run_doc["answers"] == {m: f"answer of {m}" for m in (BASE, *ADAPTERS)}
    rows = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert rows and all(r["success"] and r["text"] == r["model"] * 3 for r in rows)
    for api in ("openai-completions", "v2-generate-stream"):
        assert sorted(r["model"] for r in rows if r["api"] == api and r["target"] ==
                      "adapters") == sorted(ADAPTERS * 2)
    report = json.loads((out / "adapters.json").read_text())
    assert report["requests_per_adapter"] == {a: 4 for a in ADAPTERS}  # 2 APIs x 2 each
    assert "already running at" in (out / "summary.md").read_text()
    for path in out.iterdir():
        assert KEY not in path.read_text(), path.name


def test_adapters_url_takes_models_and_refuses_what_it_cannot_do(
        keyed_server: tuple[str, Seen], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = keyed_server
    seen.clear()
    code = _adapters_url(monkeypatch, "--url", url, "--api-key", KEY, "--models", "mlp-b",
                         "--api", "openai-completions", "--out", str(tmp_path / "one"))
    assert code == 0
    rows = [json.loads(line) for line in
            (tmp_path / "one" / "requests.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows if r["target"] == "adapters"} == {"mlp-b"}
    for args, message in [
            (["--models", "attn-c"], r"--models \['attn-c'\] are not adapters of smollm2"),
            (["--api", "v2-grpc"], "needs --grpc-url"),
            (["--", "--enforce-eager"], "with --url the server is already running")]:
        with pytest.raises(SystemExit, match=message):
            _adapters_url(monkeypatch, "--url", url, "--api-key", KEY, "--out",
                          str(tmp_path / "x"), *args)
    with pytest.raises(SystemExit, match="answered 401"):  # no key: stops at discovery
        _adapters_url(monkeypatch, "--url", url, "--out", str(tmp_path / "y"))
    with pytest.raises(SystemExit, match="give --url"):  # a key for a server it would start
        _adapters_url(monkeypatch, "--adapters", str(tmp_path), "--api-key", KEY, "--out",
                      str(tmp_path / "z"))
