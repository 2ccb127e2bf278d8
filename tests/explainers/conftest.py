"""Fixtures for the explainer tests: the real ``python -m explainers`` beside the real predictor.

``EXPLAINER_TEST_PREDICTOR_URL`` points the tests at another predictor (e.g. plain vLLM's
OpenAI server) for development; by default they use the session ``predictor`` (the runtime).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator, Sequence

import httpx
import pytest

from tests.support.server import ServerProcess, free_port

MODEL = "smollm2"


def explainer_command(predictor_host: str, model_dir: str, port: int,
                      extra: Sequence[str] = ()) -> list[str]:
    """``python -m explainers`` with the arguments KServe's controller passes, plus ours."""
    return [sys.executable, "-m", "explainers", f"--model_name={MODEL}",
            f"--predictor_host={predictor_host}", f"--http_port={port}",
            f"--model_dir={model_dir}", *extra]


def explainer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The explainer's environment: offline, unbuffered, and no key unless the test sets one
    (an ``API_KEY`` or ``PREDICTOR_API_KEY`` in the developer's shell must not leak in)."""
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "PREDICTOR_API_KEY")}
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(extra or {})
    return env


def start_explainer(predictor_host: str, model_dir: str, *, extra: Sequence[str] = (),
                    health_path: str = f"/v1/models/{MODEL}", name: str = "explainer",
                    env: dict[str, str] | None = None) -> ServerProcess:
    """Start the explainer and wait until ``health_path`` answers 200; ``env`` is added to
    its environment."""
    port = free_port()
    server = ServerProcess(explainer_command(predictor_host, model_dir, port, extra), port=port,
                           health_path=health_path, env=explainer_env(env), startup_timeout=120,
                           name=name)
    return server.start()


@pytest.fixture(scope="session")
def predictor_url(request: pytest.FixtureRequest) -> str:
    """Base URL of the predictor the explainer talks to (the real runtime by default)."""
    override = os.environ.get("EXPLAINER_TEST_PREDICTOR_URL")
    if override:
        return override.rstrip("/")
    return request.getfixturevalue("predictor").url


@pytest.fixture(scope="session")
def explainer(predictor_url: str, model_dir: str) -> Iterator[ServerProcess]:
    """One explainer process with every installed method, shared by the session."""
    host = predictor_url.split("://", 1)[1]
    server = start_explainer(host, model_dir)
    try:
        yield server
    finally:
        server.stop()


def explain(server: ServerProcess, body: dict, timeout: float = 120,
            headers: dict[str, str] | None = None) -> httpx.Response:
    """POST an explain request to ``server``."""
    return httpx.post(f"{server.url}/v1/models/{MODEL}:explain", json=body, timeout=timeout,
                      headers=headers)


def removal_sets_of_deletion_test(e: dict) -> set[frozenset[int]]:
    """The feature sets the deletion test of explanation ``e`` removed, read from ``e`` itself
    (its top-k set and, when exhaustive, every k-subset)."""
    f = e["faithfulness"]
    assert f["random_exhaustive"], "only an exhaustive test's sets can be listed"
    n = len(e["input_features"])
    return {frozenset(f["topk_features"]),
            *(frozenset(c) for c in itertools.combinations(range(n), f["k"]))}


def expected_passes(method_sets: set[frozenset[int]], e: dict) -> int:
    """Forward passes of an explanation: the baseline, plus every distinct non-empty removal
    set of the method and of the deletion test (a set is scored once per explanation)."""
    return 1 + len((method_sets | removal_sets_of_deletion_test(e)) - {frozenset()})
