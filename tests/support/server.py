"""Real server processes for tests, in the style of vLLM's ``RemoteOpenAIServer``.

Why: every feature is proven against the real ``python -m runtime`` (or explainer, or plain
vLLM) process. A server runs as a subprocess on a free port, is polled every 0.5 s until a
health URL answers 200, has its log dumped when it fails to start, and is terminated, then
killed, when the test is done. No fixed ports, no long sleeps.

The machinery is ``deployment.processes`` (installed, so the benchmark tool, the local
deployment runner and ``scripts/soak.py`` use the same code); this module adds the
repository's paths and defaults and keeps the names the suites import.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deployment import processes
from deployment.processes import engine_env, free_port

__all__ = ["DEFAULT_MODEL_DIR", "REPO", "ServerProcess", "engine_env", "free_port",
           "run_tool", "runtime_command", "start_plain_vllm", "start_runtime"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO / ".models" / "smollm2"


class ServerProcess(processes.ServerProcess):
    """``deployment.processes.ServerProcess``, run from the repository's root by default.

    ``health_path`` is polled on ``http://127.0.0.1:{port}`` every 0.5 s until it answers 200,
    the process exits, or ``startup_timeout`` passes; on failure the log is printed and the
    process is stopped. ``stop()``: SIGTERM, then SIGKILL to whatever is left of it.
    """

    def __init__(self, args: Sequence[str], *, port: int,
                 health_path: str = "/v2/health/ready", env: dict[str, str] | None = None,
                 startup_timeout: float = 300.0, name: str = "server",
                 cwd: Path | None = None, grpc_port: int | None = None,
                 tls_ca: Path | str | None = None) -> None:
        super().__init__(args, port=port, health_path=health_path, env=env,
                         startup_timeout=startup_timeout, name=name, cwd=cwd or REPO,
                         grpc_port=grpc_port, tls_ca=tls_ca)


def runtime_command(
    *,
    model_dir: Path | str = DEFAULT_MODEL_DIR,
    model_name: str = "smollm2",
    http_port: int,
    grpc_port: int,
    extra: Sequence[str] = (),
) -> list[str]:
    """The predictor's command line as KServe's ServingRuntime runs it."""
    return processes.runtime_command(model_dir=model_dir, model_name=model_name,
                                     http_port=http_port, grpc_port=grpc_port, extra=extra)


def start_runtime(
    *, model_dir: Path | str = DEFAULT_MODEL_DIR, model_name: str = "smollm2",
    extra: Sequence[str] = (), env: dict[str, str] | None = None, name: str = "runtime",
) -> ServerProcess:
    """Start ``python -m runtime`` on free ports and wait until it reports ready.

    ``server.url`` is its HTTP base URL, ``server.grpc_port`` its gRPC port.
    """
    http_port, grpc_port = free_port(), free_port()
    server = ServerProcess(
        runtime_command(model_dir=model_dir, model_name=model_name, http_port=http_port,
                        grpc_port=grpc_port, extra=extra),
        port=http_port, env=engine_env(env), name=name, grpc_port=grpc_port,
    )
    return server.start()


def start_plain_vllm(
    *, model_dir: Path | str = DEFAULT_MODEL_DIR, served_model_name: str = "smollm2",
    extra: Sequence[str] = ("--dtype=float32", "--enforce-eager", "--max-model-len=2048"),
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start plain vLLM's OpenAI server (the baseline) on a free port."""
    port = free_port()
    server = ServerProcess(
        processes.vllm_command(model_dir=model_dir, served_model_name=served_model_name,
                               port=port, extra=extra),
        port=port, health_path="/health", env=engine_env(env), name="vllm",
    )
    return server.start()


def run_tool(cmd: Sequence[str], *, timeout: float, grace: float = 60.0
             ) -> subprocess.CompletedProcess[str]:
    """Run a command-line tool that starts servers of its own (``python -m benchmarks
    side-by-side``, ``benchmarks.validate``) from the repository root, capturing its output.

    On timeout the tool gets SIGTERM first, so that its ``finally`` blocks stop those servers
    (they run in sessions of their own, which killing the tool does not reach), then SIGKILL
    after ``grace`` seconds; ``subprocess.TimeoutExpired`` is raised as by ``subprocess.run``.
    """
    with subprocess.Popen(list(cmd), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                out, err = proc.communicate(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stop_group(proc: subprocess.Popen[Any], timeout: float = 120.0) -> int:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session``, as the local
    runner is in tests: it stops its workloads on SIGTERM), SIGKILL after ``timeout``; the
    exit code."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()
