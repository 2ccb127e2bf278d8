"""Fixtures for the explainer tests: the real ``python -m explainers`` beside the real predictor.

``EXPLAINER_TEST_PREDICTOR_URL`` points the tests at another predictor (e.g. plain vLLM's
OpenAI server) for development; by default they use the session ``predictor`` (the runtime).
"""

from __future__ import annotations

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


def start_explainer(predictor_host: str, model_dir: str, *, extra: Sequence[str] = (),
                    health_path: str = f"/v1/models/{MODEL}",
                    name: str = "explainer") -> ServerProcess:
    """Start the explainer and wait until ``health_path`` answers 200."""
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    server = ServerProcess(explainer_command(predictor_host, model_dir, port, extra), port=port,
                           health_path=health_path, env=env, startup_timeout=120, name=name)
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


def explain(server: ServerProcess, body: dict, timeout: float = 120) -> httpx.Response:
    """POST an explain request to ``server``."""
    return httpx.post(f"{server.url}/v1/models/{MODEL}:explain", json=body, timeout=timeout)
