"""Start, time and stop the two servers of a side-by-side run; read their engine settings.

Why read settings from the engine's own log line: both servers build the same vLLM engine,
which logs its effective configuration once (``Initializing a V1 LLM engine (vX) with
config: ...``). Comparing those lines catches every default that one server sets and the
other does not (dtype, eager mode, prefix caching, max length, ...), which a comparison of
command lines would miss. A difference means the comparison is not like for like, and the
side-by-side run refuses to report.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from deployment.processes import ServerProcess, runtime_command, vllm_command

_CONFIG_LINE = re.compile(r"Initializing a V1 LLM engine \((v[^)]*)\) with config: (.*)$")
_KV_LINE = re.compile(r"KV cache size: ([\d,]+) tokens")
# Keys whose values are paths: compared after resolving them.
_PATH_KEYS = ("model", "tokenizer")


def server_info(server: ServerProcess) -> dict[str, Any]:
    """What ``run.json`` records of a server: command, time to ready, URL, log, settings."""
    log = server.log_path
    return {"command": server.argv, "ready_s": server.ready_s or 0.0, "url": server.url,
            "log": str(log),
            "engine_settings": engine_settings(log) if log and log.exists() else None}


def _split_top(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth, quote = 0, ""
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
                   grpc_port: int, log_dir: Path, startup_timeout: float = 600.0
                   ) -> ServerProcess:
    """``python -m runtime`` as KServe's ServingRuntime runs it (not started yet)."""
    return ServerProcess(
        runtime_command(model_dir=model_dir, model_name=name, http_port=port,
                        grpc_port=grpc_port, extra=engine_args),
        port=port, grpc_port=grpc_port, name="runtime", log_path=log_dir / "runtime.log",
        startup_timeout=startup_timeout, poll_interval=0.25)


def vllm_server(model_dir: str, name: str, engine_args: list[str], port: int,
                log_dir: Path, startup_timeout: float = 600.0) -> ServerProcess:
    """Plain vLLM's OpenAI server (not started yet)."""
    return ServerProcess(
        vllm_command(model_dir=model_dir, served_model_name=name, port=port, extra=engine_args),
        port=port, health_path="/health", name="vllm", log_path=log_dir / "vllm.log",
        startup_timeout=startup_timeout, poll_interval=0.25)
