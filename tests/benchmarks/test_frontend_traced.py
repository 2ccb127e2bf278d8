"""``frontend-cpu --traced`` without an engine (fast tier).

Why: the measurement's meaning rests on three things a real run cannot check by itself: every
request to every server carries a W3C ``traceparent`` of its own (HTTP header, gRPC
metadata), only the traced runtime gets ``--otlp-traces-endpoint``, and the report's ratios
and span counts are the right divisions of what was measured and received. Stand-in servers
in this process (one of them exporting two spans per request to the real receiver, as the
runtime and vLLM do) and synthetic rows check them; the cost itself is a measurement
(docs/metrics.md, "Traces").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from benchmarks import frontend_cpu, frontend_traced
from benchmarks.clients import SENDERS, Sampling, Target, new_traceparent
from benchmarks.frontend_traced import (
    ENGINE_SPAN,
    RUNTIME_SERVICE,
    TRACED,
    SpanWatch,
    add_ratios,
    markdown_section,
    tally,
    traced_differences,
)
from benchmarks.load import Load, run_point
from benchmarks.otlp import Receiver
from benchmarks.workload import Prompt
from tests.benchmarks.test_running_server import _RecordingGrpc
from tests.support.fake_bench_server import serve_in_thread
from tests.support.server import DEFAULT_MODEL_DIR

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


def _export(endpoint: str, spans: list[tuple[str, str]]) -> None:
    """Send (service, span name) spans to a receiver over OTLP/gRPC, one resource each."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    for service, name in spans:
        rs = request.resource_spans.add()
        attr = rs.resource.attributes.add()
        attr.key, attr.value.string_value = "service.name", service
        rs.scope_spans.add().spans.append(trace_pb2.Span(
            name=name, trace_id=os.urandom(16), span_id=os.urandom(8)))
    with grpc.insecure_channel(endpoint.removeprefix("grpc://")) as channel:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=10)


def _header_app(seen: list[dict[str, str]], endpoint: str | None = None) -> web.Application:
    """OpenAI chat/completions and generate_stream, one token each with usage; records every
    request's headers; with ``endpoint``, exports a runtime span and an ``llm_request`` span
    per request there (as the traced runtime does)."""
    async def sse(request: web.Request, event: dict[str, Any]) -> web.StreamResponse:
        seen.append(dict(request.headers))
        if endpoint:
            await asyncio.to_thread(_export, endpoint, [(RUNTIME_SERVICE, "openai chat"),
                                                         ("vllm", ENGINE_SPAN)])
        usage = {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(f"data: {json.dumps(event)}\n\ndata: {json.dumps(usage)}\n\n"
                         "data: [DONE]\n\n".encode())
        return resp

    async def chat(request: web.Request) -> web.StreamResponse:
        return await sse(request, {"choices": [{"delta": {"content": "x"}}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        return await sse(request, {"choices": [{"text": "x"}]})

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        return await sse(request, {"text_output": "x", "completion_tokens": 1})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v2/models/{model}/generate_stream", generate_stream)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/health", ready)
    return app


@pytest.mark.parametrize("api", ["openai-chat", "openai-completions", "v2-generate-stream"])
def test_http_requests_carry_a_traceparent_each_only_when_asked(api: str) -> None:
    seen: list[dict[str, str]] = []
    prompts = [Prompt(f"p{i}", 2, 1) for i in range(4)]

    async def send(target: Target) -> None:
        async with aiohttp.ClientSession() as session:
            res = await run_point(SENDERS[api], session, target, prompts, Sampling(),
                                  Load(concurrency=2), api=api, repeat=0, seed=0)
        assert all(r.success for r in res.records), [r.error for r in res.records]

    with serve_in_thread(_header_app(seen)) as url:
        asyncio.run(send(Target("t", url, "m", traceparent=True)))
        sent = [h.get("traceparent", "") for h in seen]
        assert all(TRACEPARENT.match(t) for t in sent), sent
        assert len(set(sent)) == len(prompts)  # each request its own trace
        seen.clear()
        asyncio.run(send(Target("t", url, "m")))
        assert not any("traceparent" in h for h in seen)


def test_grpc_metadata_carries_a_fresh_traceparent_next_to_the_key() -> None:
    assert Target("t", "u", "m").grpc_metadata() is None
    one, two = (Target("t", "u", "m", traceparent=True).grpc_metadata() for _ in range(2))
    assert one and two and set(one) == {"traceparent"} and one != two
    keyed = Target("t", "u", "m", api_key="k", traceparent=True).grpc_metadata()
    assert keyed and keyed["authorization"] == "Bearer k"
    assert TRACEPARENT.match(keyed["traceparent"])
    assert TRACEPARENT.match(new_traceparent())
    assert Target("t", "u", "m", traceparent=True).describe()["traceparent"] is True


@pytest.mark.parametrize("api", ["v2-grpc", "v2-grpc-stream"])
def test_grpc_calls_send_the_traceparent(api: str) -> None:
    if "kserve" in sys.modules:  # tritonclient.grpc registers kserve's protobuf package again
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"{__file__}::test_grpc_calls_send_the_traceparent[{api}]"],
            capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:]
        return
    from benchmarks.grpc_client import v2_grpc, v2_grpc_stream

    client = _RecordingGrpc()
    res = asyncio.run(run_point(v2_grpc if api == "v2-grpc" else v2_grpc_stream, client,
                                Target("t", "http://x", "m", traceparent=True),
                                [Prompt(f"p{i}", 2, 4) for i in range(3)], Sampling(),
                                Load(concurrency=2), api=api, repeat=0, seed=0))
    assert all(r.success for r in res.records)
    sent = [h["traceparent"] for h in client.headers]
    assert len(set(sent)) == 3 and all(TRACEPARENT.match(t) for t in sent)


def test_receiver_counts_without_keeping_and_the_watch_settles() -> None:
    with Receiver(keep=False) as receiver:
        watch = SpanWatch(receiver, timeout_s=0.5)
        _export(receiver.endpoint, [(RUNTIME_SERVICE, "openai chat"), ("vllm", ENGINE_SPAN),
                                    ("other", "x")])
        assert receiver.spans == [] and receiver.count() == 3
        assert receiver.count(service=RUNTIME_SERVICE) == 1
        assert receiver.count(name=ENGINE_SPAN) == 1
        got = asyncio.run(watch.settle(1))
        assert got["flush_wait_s"] < 0.4
        assert got["spans"] == {"runtime": 1, ENGINE_SPAN: 1, "other": 1}
        watch.begin()
        got = asyncio.run(watch.settle(2))  # nothing more comes: it gives up at the timeout
        assert got["flush_wait_s"] >= 0.5 and got["spans"] == {
            "runtime": 0, ENGINE_SPAN: 0, "other": 0}
        assert watch.record()["by_name"] == [[RUNTIME_SERVICE, "openai chat", 1],
                                             ["other", "x", 1], ["vllm", ENGINE_SPAN, 1]]
    with Receiver() as keeping:  # the tests' receiver still keeps every span
        _export(keeping.endpoint, [(RUNTIME_SERVICE, "openai chat")])
        assert [s.service for s in keeping.spans] == [RUNTIME_SERVICE]


def test_tally_groups_by_service_then_name() -> None:
    assert tally({(RUNTIME_SERVICE, "v2-grpc ModelStreamInfer"): 4,
                  (RUNTIME_SERVICE, "openai chat"): 3, ("vllm.llm_engine", ENGINE_SPAN): 7,
                  ("", ENGINE_SPAN): 1, ("x", "y"): 2}) == {
        "runtime": 7, ENGINE_SPAN: 8, "other": 2}


def test_the_endpoint_is_the_only_setting_allowed_to_differ() -> None:
    obs = "ObservabilityConfig(show_hidden_metrics_for_version=None, otlp_traces_endpoint={})"
    plain = {"dtype": "torch.float32", "observability_config": obs.format("None")}
    traced = {**plain, "observability_config": obs.format("'grpc://127.0.0.1:5'")}
    assert traced_differences(plain, traced) == []
    assert traced_differences(plain, {**traced, "dtype": "torch.bfloat16"}) == [
        "dtype: 'torch.float32' != 'torch.bfloat16'"]
    assert frontend_traced.endpoint_args("grpc://h:1") == ["--otlp-traces-endpoint",
                                                           "grpc://h:1"]


def _doc(spans: dict[str, int], sent: int) -> dict[str, Any]:
    measured = {("runtime", "openai-chat"): 200.0, (TRACED, "openai-chat"): 210.0,
                ("runtime", "v2-grpc-stream"): 250.0, (TRACED, "v2-grpc-stream"): 275.0,
                ("vllm", "openai-chat"): 250.0, ("vllm", "openai-completions"): 200.0}
    points = [{"server": s, "api": a, "repeat": 0, "requests": 48, "failed": 0,
               "tokens": 3072, "cpu_s": ms * 3.072 / 1000, "ms_per_1k_tokens": ms,
               "token_sources": ["usage"], "flush_wait_s": 2.0 if s == TRACED else None,
               "idle_ms_per_s": 3.072 if s == TRACED else 0.0}
              for (s, a), ms in measured.items()]
    summary = frontend_cpu.summarize(points)
    add_ratios(summary)
    return {"config": {"apis": ["openai-chat", "v2-grpc-stream"]}, "summary": summary,
            "points": points, "tracing": {"spans": spans, "requests_sent": sent}}


def test_ratios_and_the_cost_table() -> None:
    doc = _doc({"runtime": 112, ENGINE_SPAN: 112, "other": 0}, 112)
    rows = {(r["server"], r["api"]): r for r in doc["summary"]}
    assert rows[(TRACED, "openai-chat")]["vs_untraced"] == pytest.approx(1.05)
    assert rows[(TRACED, "v2-grpc-stream")]["vs_untraced"] == pytest.approx(1.10)
    assert "vs_untraced" not in rows[("runtime", "openai-chat")]
    text = "\n".join(markdown_section(doc))
    assert "| OpenAI chat (stream) | 200 | 210 | **1.050x** | 1.00x | 0.80x |" in text
    assert "| gRPC ModelStreamInfer | 250 | 275 | **1.100x** | 1.25x | 1.00x |" in text
    assert "112 runtime spans" in text and f"112 vLLM `{ENGINE_SPAN}` spans" in text
    assert "wait 2.0 s per load" in text and "about 2.0 ms per 1000 tokens" in text
    assert "WARNING" not in text


def test_a_run_where_tracing_did_nothing_says_so() -> None:
    text = "\n".join(markdown_section(_doc({"runtime": 112, ENGINE_SPAN: 0, "other": 0}, 112)))
    assert f"WARNING: fewer {ENGINE_SPAN} spans (0) than requests (112)" in text
    assert "WARNING: fewer runtime" not in text


def _flags(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    frontend_cpu.add_flags(p)
    return p.parse_args(list(argv))


def test_traced_needs_servers_it_starts() -> None:
    with pytest.raises(SystemExit, match="--traced"):
        frontend_cpu._check(_flags("--traced", "--url", "http://x", "--api",
                                        "openai-chat"), [])


def test_the_command_traces_one_runtime_and_reports_its_spans(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """The whole command on in-process stand-ins: runtime, traced runtime, plain vLLM in that
    order, the endpoint only on the traced one, a traceparent on every request, the spans the
    traced stand-in exported counted in the report."""
    started: list[tuple[str, list[str]]] = []
    seen: dict[str, list[dict[str, str]]] = {}

    @contextlib.contextmanager
    def fake_server(name: str, args: argparse.Namespace, engine_args: list[str],
                    model_dir: str) -> Iterator[tuple[Target, int, dict[str, Any]]]:
        started.append((name, engine_args))
        endpoint = (engine_args[engine_args.index("--otlp-traces-endpoint") + 1]
                    if "--otlp-traces-endpoint" in engine_args else None)
        settings = {"dtype": "float32", "observability_config":
                    f"ObservabilityConfig(otlp_traces_endpoint={endpoint and repr(endpoint)})"}
        with serve_in_thread(_header_app(seen.setdefault(name, []), endpoint)) as url:
            yield (Target(name, url, "m", traceparent=args.traced), os.getpid(),
                   {"url": url, "command": ["stand-in", *engine_args], "pid": os.getpid(),
                    "engine_settings": settings, "started_by_benchmark": True})

    monkeypatch.setattr(frontend_cpu, "_server", fake_server)
    args = _flags("--model-dir", str(DEFAULT_MODEL_DIR), "--traced", "--api",
                  "openai-chat,v2-generate-stream", "--requests", "3", "--repeats", "1",
                  "--warmup", "2", "--concurrency", "2", "--cooldown", "0",
                  "--input-len", "8", "--output-len", "1", "--out", str(tmp_path),
                  "--name", "r")
    assert frontend_cpu.cmd_frontend_cpu(args, ["--dtype=float32"]) == 0
    assert [n for n, _ in started] == ["runtime", TRACED, "vllm"]
    assert [len(a) for _, a in started] == [1, 3, 1]  # the endpoint on the traced one only
    for name, headers in seen.items():
        assert all(TRACEPARENT.match(h.get("traceparent", "")) for h in headers), name
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["settings_differences"] == []
    sent = 2 * (2 + 3)  # two APIs: warm-up and measured requests
    assert doc["tracing"]["requests_sent"] == sent
    assert doc["tracing"]["spans"] == {"runtime": sent, ENGINE_SPAN: sent, "other": 0}
    traced = [p for p in doc["points"] if p["server"] == TRACED]
    assert [p["spans"] for p in traced] == [{"runtime": 3, ENGINE_SPAN: 3, "other": 0}] * 2
    text = (tmp_path / "r.md").read_text()
    assert "## Tracing cost" in text and f"{sent} runtime spans" in text
    assert "WARNING" not in text
