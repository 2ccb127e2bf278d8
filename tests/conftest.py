"""Session-wide fixtures: one real predictor process shared by every test that needs one.

Tests that must kill or restart a server start their own with ``tests.support.server``.
Tiers, switches and how to run against a server you already run: tests/README.md.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import DEFAULT_MODEL_DIR, REPO, ServerProcess, start_runtime


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The default model folder prepared by ``make model``."""
    path = os.environ.get("TEST_MODEL_DIR", str(DEFAULT_MODEL_DIR))
    if not os.path.isfile(os.path.join(path, "config.json")):
        pytest.fail(f"{path} holds no model: run `make model` first")
    return path


@pytest.fixture(scope="session")
def predictor(model_dir: str) -> Iterator[ServerProcess]:
    """The real ``python -m runtime`` with SmolLM2, started once per test session.

    ``predictor.url`` is its HTTP base URL, ``predictor.grpc_port`` its gRPC port.
    """
    external = os.environ.get("TEST_PREDICTOR_URL")  # developer shortcut: reuse a running server
    if external:
        server = ServerProcess([], port=int(external.rsplit(":", 1)[1]), name="external")
        server.grpc_port = int(os.environ["TEST_PREDICTOR_GRPC_PORT"])  # type: ignore[attr-defined]
        yield server
        return
    # A 2048-token context (a vLLM engine argument, passed through) keeps the KV cache small
    # and makes "prompt longer than the context" cheap to test. Tool calling as documented for
    # SmolLM2 (README, "Structured outputs and tool calls"): hermes, its ChatML tool-call format.
    server = start_runtime(model_dir=model_dir, extra=[
        "--max-model-len=2048", "--enable-auto-tool-choice", "--tool-call-parser=hermes"],
        name="predictor")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def lora_adapters(model_dir: str) -> dict[str, Path]:
    """The four example LoRA adapters of the model (``deployment.adapters.EXAMPLES``), built
    with peft once and kept under .cache (same specs, same weights)."""
    from deployment.adapters import build_examples

    return build_examples(model_dir, REPO / ".cache" / "adapters-v1")


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the session's predictor is ``slow`` even if its module forgot the
    marker: the fast tier (``-m "not slow"``, ``make unit``) must never start an engine."""
    for item in items:
        if "predictor" in getattr(item, "fixturenames", ()) and \
                item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


# What the fast tier must never start: an engine (the runtime, plain vLLM, Ray), or the
# explainer that needs one. Stand-ins (Python's http.server, `sleep`) are fine.
REAL_SERVERS = ("runtime", "vllm.entrypoints", "explainers")


def _real_server(argv: list[str]) -> str | None:
    """The module of ``python -m MODULE`` (or ``ray``) if it is one of the real servers."""
    if argv and os.path.basename(argv[0]) in ("ray", "vllm"):
        return os.path.basename(argv[0])
    for flag, module in itertools.pairwise(argv):
        if flag == "-m" and module.startswith(REAL_SERVERS):
            return module
    return None


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_engine(request: pytest.FixtureRequest,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """In a test not marked ``slow``, starting a real server is an error, not a slow pass:
    the fast tier's promise (no engine, no predictor, no explainer) is enforced here, where
    every server process starts (``deployment.processes.ChildProcess.start``)."""
    if request.node.get_closest_marker("slow") is not None:
        return
    from deployment.processes import ChildProcess

    start = ChildProcess.start

    def guarded(self: ChildProcess) -> object:
        module = _real_server(self.argv)
        if module is not None:
            pytest.fail(f"a fast-tier test started {module}: mark it slow (tests/README.md)")
        return start(self)

    monkeypatch.setattr(ChildProcess, "start", guarded)

