"""Real server processes for tests, in the style of vLLM's ``RemoteOpenAIServer``.

Why: every feature is proven against the real ``python -m runtime`` (or explainer, or plain
vLLM) process. A server runs as a subprocess on a free port, is polled every 0.5 s until a
health URL answers 200, has its log dumped when it fails to start, and is terminated, then
killed, when the test is done. No fixed ports, no long sleeps.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO / ".models" / "smollm2"


def free_port() -> int:
    """A TCP port that nothing listens on right now (bound by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a process that builds a vLLM engine on the CPU: small KV cache, offline."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class ServerProcess:
    """A server subprocess with its log in a temporary file.

    ``health_path`` is polled on ``http://127.0.0.1:{port}`` every 0.5 s until it answers 200,
    the process exits, or ``startup_timeout`` passes; on failure the log is printed and the
    process is stopped.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        port: int,
        health_path: str = "/v2/health/ready",
        env: dict[str, str] | None = None,
        startup_timeout: float = 600.0,
        name: str = "server",
        cwd: Path | None = None,
    ) -> None:
        self.args = list(args)
        self.port = port
        self.health_path = health_path
        self.env = env if env is not None else engine_env()
        self.startup_timeout = startup_timeout
        self.name = name
        self.cwd = cwd or REPO
        self.log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
            prefix=f"{name}-", suffix=".log", delete=False
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.args,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # its own process group: stop() reaches the engine child too
        )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.dump_log()
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} during start-up")
            try:
                if httpx.get(self.url + self.health_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.dump_log()
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {self.startup_timeout} s")

    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def dump_log(self, tail: int = 200) -> None:
        lines = self.log().splitlines()[-tail:]
        print(f"----- {self.name} log ({self.log_file.name}) -----", file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers (engine core, workers)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def runtime_command(
    *,
    model_dir: Path | str = DEFAULT_MODEL_DIR,
    model_name: str = "smollm2",
    http_port: int,
    grpc_port: int,
    extra: Sequence[str] = (),
) -> list[str]:
    """The predictor's command line as KServe's ServingRuntime runs it."""
    return [
        sys.executable, "-m", "runtime",
        f"--model_name={model_name}", f"--model_dir={model_dir}",
        f"--http_port={http_port}", f"--grpc_port={grpc_port}",
        *extra,
    ]


def start_runtime(
    *, model_dir: Path | str = DEFAULT_MODEL_DIR, model_name: str = "smollm2",
    extra: Sequence[str] = (), env: dict[str, str] | None = None, name: str = "runtime",
) -> ServerProcess:
    """Start ``python -m runtime`` on free ports and wait until it reports ready."""
    http_port, grpc_port = free_port(), free_port()
    server = ServerProcess(
        runtime_command(model_dir=model_dir, model_name=model_name, http_port=http_port,
                        grpc_port=grpc_port, extra=extra),
        port=http_port, env=engine_env(env), name=name,
    )
    server.grpc_port = grpc_port  # type: ignore[attr-defined]
    return server.start()


def start_plain_vllm(
    *, model_dir: Path | str = DEFAULT_MODEL_DIR, served_model_name: str = "smollm2",
    extra: Sequence[str] = ("--dtype=float32", "--enforce-eager", "--max-model-len=2048"),
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start plain vLLM's OpenAI server (the baseline), as FACTS.md says works with vllm-cpu."""
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
         "--served-model-name", served_model_name, "--port", str(port), "--host", "127.0.0.1",
         *extra],
        port=port, health_path="/health", env=engine_env(env), name="vllm",
    )
    return server.start()
