"""Start, time and stop the two servers of a side-by-side run; read their engine settings.

Why read settings from the engine's own log line: both servers build the same vLLM engine,
which logs its effective configuration once (``Initializing a V1 LLM engine (vX) with
config: ...``). Comparing those lines catches every default that one server sets and the
other does not (dtype, eager mode, prefix caching, max length, ...), which a comparison of
command lines would miss. A difference means the comparison is not like for like, and the
side-by-side run refuses to report.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

_CONFIG_LINE = re.compile(r"Initializing a V1 LLM engine \((v[^)]*)\) with config: (.*)$")
_KV_LINE = re.compile(r"KV cache size: ([\d,]+) tokens")
# Keys whose values are paths: compared after resolving them.
_PATH_KEYS = ("model", "tokenizer")


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop the servers we started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def server_env() -> dict[str, str]:
    """The engine's environment: small CPU KV cache, offline, no usage stats."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ManagedServer:
    """A server subprocess in its own process group, with its log in ``log_path``."""

    name: str
    command: list[str]
    port: int
    health_path: str
    log_path: Path
    grpc_port: int | None = None
    ready_s: float = 0.0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 600.0) -> float:
        """Start and poll ``health_path`` every 0.25 s; return the seconds until ready."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                     env=server_env(), start_new_session=True)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} during "
                                   f"start-up; log: {self.log_path}")
            try:
                if httpx.get(self.url + self.health_path, timeout=2).status_code == 200:
                    self.ready_s = time.perf_counter() - t0
                    return self.ready_s
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout} s; log: {self.log_path}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL what is left (engine core, workers)."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue

    def info(self) -> dict[str, Any]:
        return {"command": self.command, "ready_s": self.ready_s, "url": self.url,
                "log": str(self.log_path), "engine_settings": engine_settings(self.log_path)}


def _split_top(text: str) -> list[str]:
    parts, depth, cur, quote = [], 0, [], ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def parse_config_line(line: str) -> dict[str, str] | None:
    """``key=value`` pairs of vLLM's engine-config log line (values kept as text)."""
    m = _CONFIG_LINE.search(line)
    if not m:
        return None
    settings = {"vllm_version": m.group(1)}
    for part in _split_top(m.group(2)):
        key, sep, value = part.partition("=")
        if sep:
            settings[key.strip()] = value.strip()
    for key in _PATH_KEYS:
        if key in settings:
            settings[key] = str(Path(settings[key].strip("'\"")).resolve())
    return settings


def engine_settings(log_path: Path) -> dict[str, str] | None:
    """The effective engine settings a server logged, plus its KV cache size in tokens."""
    settings = None
    for line in log_path.read_text(errors="replace").splitlines():
        settings = parse_config_line(line) or settings
        if settings is not None and (m := _KV_LINE.search(line)):
            settings["kv_cache_tokens"] = m.group(1).replace(",", "")
    return settings


def settings_differences(a: dict[str, str] | None, b: dict[str, str] | None) -> list[str]:
    """Human-readable differences between two servers' engine settings (empty: same)."""
    if a is None or b is None:
        return ["engine settings not found in a server's log (no 'Initializing a V1 LLM "
                "engine ... with config:' line)"]
    return [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def runtime_server(model_dir: str, name: str, engine_args: list[str], port: int,
                   grpc_port: int, log_dir: Path) -> ManagedServer:
    """``python -m runtime`` as KServe's ServingRuntime runs it."""
    cmd = [sys.executable, "-m", "runtime", f"--model_name={name}", f"--model_dir={model_dir}",
           f"--http_port={port}", f"--grpc_port={grpc_port}", *engine_args]
    return ManagedServer("runtime", cmd, port, "/v2/health/ready", log_dir / "runtime.log",
                         grpc_port=grpc_port)


def vllm_server(model_dir: str, name: str, engine_args: list[str], port: int,
                log_dir: Path) -> ManagedServer:
    """Plain vLLM's OpenAI server (the ``vllm`` console script fails with vllm-cpu)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
           *engine_args]
    return ManagedServer("vllm", cmd, port, "/health", log_dir / "vllm.log")
