"""Unit tier: every transport runs inference through the pipeline's one sequence
(``Pipeline.request``), and nothing outside the pipeline counts requests, tracks them in
flight, or decides their outcome.

Two nets: the source of ``runtime/`` is read for the calls that belong to the pipeline alone;
and each transport (every HTTP inference route, gRPC ModelInfer, each ModelStreamInfer message)
is driven on a fake engine with ``Pipeline.request`` and the counter spied on: one entry and
exactly one count per request, under the pipeline's label."""

from __future__ import annotations

import ast
import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime import pipeline as pipeline_module
from runtime.pipeline import Pipeline
from tests.runtime.test_pipeline import INFERENCE, send
from tests.support.app import assemble

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"

# name called -> the modules that may call it, and why
ONLY_IN = {
    "count_request": {"pipeline.py"},  # one count per request, at the end of its sequence
    "enter": {"pipeline.py"},  # admission.enter/leave: the in-flight count and the drain
    "leave": {"pipeline.py"},
    # OpenAI names its model in the body; model metadata (not inference) names one too
    "resolve": {"pipeline.py", "openai.py", "metadata.py"},
    # the pipeline's readiness step; vLLM's own /health probe answers from it too
    "check_ready": {"pipeline.py", "openai.py"},
    # the transports turn a final HTTP status into an outcome; nothing else classifies
    "outcome_of": {"pipeline.py", "gate.py"},
}


def _calls(tree: ast.AST) -> Iterator[tuple[str, int]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name:
                yield name, node.lineno


def test_only_the_pipeline_counts_tracks_and_classifies() -> None:
    found = []
    for path in RUNTIME.rglob("*.py"):
        for name, line in _calls(ast.parse(path.read_text())):
            if name in ONLY_IN and path.name not in ONLY_IN[name]:
                found.append(f"{path.relative_to(RUNTIME)}:{line} calls {name}")
    assert not found, found


def test_no_error_has_its_status_changed_after_construction() -> None:
    """Each kind of error is a subclass carrying its status (runtime.errors)."""
    found = []
    for path in RUNTIME.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for leaf in ast.walk(t):
                        if isinstance(leaf, ast.Attribute) and leaf.attr in ("http_status",
                                                                             "grpc_code"):
                            found.append(f"{path.relative_to(RUNTIME)}:{node.lineno}")
    assert not found, found


@pytest.fixture
def entries(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    """Every entry into ``Pipeline.request`` (protocol, model), and every count."""
    seen: list[Any] = []
    counted: list[tuple[str, str, str]] = []
    original = Pipeline.request

    @contextlib.contextmanager
    def spy(self: Pipeline, protocol: str, model: str | None, **kw: Any) -> Iterator[Any]:
        seen.append((protocol, model))
        with original(self, protocol, model, **kw) as call:
            yield call

    real_count = pipeline_module.count_request

    def count(model: str, protocol: str, outcome: str) -> None:
        counted.append((model, protocol, outcome))
        real_count(model, protocol, outcome)

    monkeypatch.setattr(Pipeline, "request", spy)
    monkeypatch.setattr(pipeline_module, "count_request", count)
    seen.append(counted)  # the first element: the counts
    return seen


@pytest.mark.parametrize("path,body", INFERENCE)
def test_each_http_route_enters_once_and_counts_once(path: str, body: Any,
                                                     entries: list[Any]) -> None:
    counted = entries[0]
    r = send(assemble(), "POST", path, body)
    assert r.status_code == 200, r.text
    assert len(entries) == 2, entries[1:]
    assert len(counted) == 1 and counted[0][0] == "smollm2" and counted[0][2] == "success"


@pytest.mark.parametrize("path,body", INFERENCE)
def test_a_refused_request_is_counted_once_too(path: str, body: Any,
                                               entries: list[Any]) -> None:
    counted = entries[0]
    r = send(assemble(api_key="k"), "POST", path, body)
    assert r.status_code == 401
    assert len(entries) == 2
    assert [c[2] for c in counted] == ["client_error"]


def test_grpc_model_infer_and_each_stream_message_enter_once(entries: list[Any]) -> None:
    from tests.runtime.test_triton_pipeline import _exchange, infer_request

    counted = entries[0]
    asyncio.run(_exchange([infer_request("a b"), infer_request("c", model="nope"),
                           infer_request("d e", stream=False)]))
    assert [e for e in entries[1:]] == [("v2-grpc", "smollm2"), ("v2-grpc", "nope"),
                                        ("v2-grpc", "smollm2")]
    assert [(c[0], c[2]) for c in counted] == [("smollm2", "success"),
                                               ("_other", "client_error"),
                                               ("smollm2", "success")]


def test_an_openai_alias_is_counted_and_measured_under_the_alias(entries: list[Any]) -> None:
    counted = entries[0]
    parts = assemble(served_model_aliases=["alias"])
    seen: list[str | None] = []
    respond = parts.engine.openai_respond

    async def spying(kind: str, request: Any, raw: Any) -> Any:
        from runtime.metrics import current_model

        seen.append(current_model.get())  # what the engine's token series will be labelled
        return await respond(kind, request, raw)

    parts.engine.openai_respond = spying  # type: ignore[method-assign]
    r = send(parts, "POST", "/openai/v1/completions", {"model": "alias", "prompt": "hi"})
    assert r.status_code == 200, r.text
    assert seen == ["alias"] and counted[0][0] == "alias"


def test_a_request_ending_after_its_adapter_was_unloaded_creates_no_series() -> None:
    """Unit (no server): an unloaded adapter's series are dropped, and a request that was in
    flight across the unload is recorded under ``_other`` when it ends, until the adapter is
    served again."""
    from prometheus_client import REGISTRY

    from runtime import metrics

    def requests(model: str) -> float:
        return REGISTRY.get_sample_value("kserve_llm_requests_total", {
            "model": model, "protocol": "v2-rest", "outcome": "success"}) or 0.0

    metrics.count_request("gone-adapter", "v2-rest", "success")
    assert requests("gone-adapter") == 1
    metrics.forget_model("gone-adapter")
    other = requests("_other")
    metrics.count_request("gone-adapter", "v2-rest", "success")  # the one that was in flight
    metrics.record_engine_request("gone-adapter", "v2-rest", prompt_tokens=3,
                                  generation_tokens=2, ttft=0.1, tpot=None)
    assert REGISTRY.get_sample_value("kserve_llm_requests_total", {
        "model": "gone-adapter", "protocol": "v2-rest", "outcome": "success"}) is None
    assert REGISTRY.get_sample_value("kserve_llm_generation_tokens_total", {
        "model": "gone-adapter", "protocol": "v2-rest"}) is None
    assert requests("_other") == other + 1
    metrics.serve_model("gone-adapter")  # loaded again: its own name again
    metrics.count_request("gone-adapter", "v2-rest", "success")
    assert requests("gone-adapter") == 1


def test_a_burst_cannot_pass_the_waiting_bound_together() -> None:
    """Admission counts what it admitted until the request ends, not only what reached the
    engine: requests admitted together (none has started in the engine yet) are bounded, and
    what a finished request was admitted for is released."""
    from runtime.errors import OverloadedError
    from runtime.limits import Work

    parts = assemble(max_waiting_requests=2)  # the fake engine's capacity is 4
    pipeline = parts.pipeline

    async def go() -> list[str]:
        done = [asyncio.Event() for _ in range(8)]
        outcomes: list[str] = []

        async def one(i: int) -> None:  # a request in a task of its own, as on a server
            try:
                with pipeline.request("v2-rest", "smollm2"):
                    pipeline.admit(Work(1))
                    outcomes.append("admitted")
                    await done[i].wait()
            except OverloadedError:
                outcomes.append("refused")

        tasks = [asyncio.ensure_future(one(i)) for i in range(7)]
        await asyncio.sleep(0.05)  # all seven have run up to their wait: none in the engine
        assert parts.admission.engine_requests == 0 and parts.admission.admitted == 6
        done[0].set()  # one ends: what it was admitted for is released
        await asyncio.sleep(0.05)
        assert parts.admission.admitted == 5
        tasks.append(asyncio.ensure_future(one(7)))  # room again
        await asyncio.sleep(0.05)
        for ev in done:
            ev.set()
        await asyncio.gather(*tasks)
        assert parts.admission.admitted == 0
        return outcomes

    outcomes = asyncio.run(go())
    assert outcomes.count("refused") == 1 and outcomes.count("admitted") == 7, outcomes


def test_the_runtimes_own_queue_is_a_gauge() -> None:
    """kserve_llm_requests_admitted_waiting: admitted by the runtime, not yet in the engine."""
    from prometheus_client import REGISTRY

    from runtime.admission import Admission

    admission = Admission("queue-model", capacity=4, max_waiting=None)

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("kserve_llm_requests_admitted_waiting",
                                         {"model": "queue-model"})

    admission.admit(3)
    assert gauge() == 3
    admission.engine_started()  # one reached the engine
    assert gauge() == 2
    admission.release(3)
    admission.engine_finished()
    assert gauge() == 0
