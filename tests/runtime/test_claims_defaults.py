"""Unit tier: docs/operations.md's claims about the command line, read from the real parsers (no
server, no engine): the documented defaults, the collision table of ``python -m runtime --help``,
and that vLLM's own gRPC server is never asked for.

Every expected value below is the literal of docs/operations.md, never the module's constant, so
a changed default fails here until docs/operations.md changes with it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime import cli, serve_cli
from runtime.settings import RuntimeSettings
from tests.support.server import REPO

MIB = 1024 * 1024

# docs/operations.md, "Running the predictor" and its flag table: flag -> documented default.
DOCUMENTED = {
    "max_request_bytes": 8 * MIB,       # "--max_request_bytes (default 8 MiB ...)"
    "health_check_interval": 1.0,       # "--health_check_interval (default 1 s)"
    "drain_timeout": 25.0,              # "--drain_timeout (s, default 25 ...)"
    "max_waiting_requests": 512,        # "--max_waiting_requests (default 512)"
    "max_adapters": 32,                 # "--max_adapters (32)", "(default 32, static ones ...)"
    "enable_adapter_loading": False,    # "--enable_adapter_loading (default off)"
    "enable_operator_routes": False,    # "--enable_operator_routes (default off)"
    "allowed_adapter_dirs": [],         # "--allowed_adapter_dirs DIR[,DIR] (default none)"
    "protect_metrics": False,           # "--protect_metrics true to cover /metrics too"
    "limits.max_batch_size": 256,       # "--max_batch_size (256)"
    "limits.max_n": 16,                 # "--max_n (16)"
    "limits.max_stop_sequences": 32,    # "--max_stop_sequences (32)"
    "limits.max_token_ids": 1024,       # "--max_token_ids (1024, each list)"
    "limits.max_bad_words": 128,        # "--max_bad_words (128)"
    "limits.max_tokens": None,          # "--max_tokens_limit" (bounded by the context only)
    "limits.default_max_tokens": None,  # "default: --max_tokens_limit if set, else the context"
}


def _get(settings: RuntimeSettings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _sources(model_dir: str) -> dict[str, RuntimeSettings]:
    return {
        "python -m runtime": cli.parse(["--model_name", "m", "--model_dir", model_dir]),
        "python -m runtime serve": serve_cli.parse([model_dir]),
        "RuntimeSettings()": RuntimeSettings(model_name="m", model_dir=model_dir),
    }


@pytest.mark.parametrize("source", ["python -m runtime", "python -m runtime serve",
                                    "RuntimeSettings()"])
def test_documented_defaults(source: str, tmp_path: Path) -> None:
    """README: the runtime's flags default to the values it documents (DOCUMENTED above)."""
    settings = _sources(str(tmp_path))[source]
    wrong = {name: _get(settings, name) for name in DOCUMENTED
             if _get(settings, name) != DOCUMENTED[name]}
    assert not wrong, f"defaults that differ from the README: {wrong}"


def test_model_dir_defaults_to_mnt_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """README: `--model_dir DIR` is KServe's (default `/mnt/models`) and becomes vLLM's --model."""
    monkeypatch.setattr(cli.os.path, "isdir", lambda path: path == "/mnt/models")
    assert cli.parse(["--model_name", "m"]).model_dir == "/mnt/models"
    assert "default /mnt/models" in cli.build_parser().format_help()


def test_serve_mode_listener_defaults(tmp_path: Path) -> None:
    """README: `serve` mode: `--port` (default 8000); no gRPC unless `--grpc_port` is given."""
    settings = serve_cli.parse([str(tmp_path)])
    assert (settings.http_port, settings.enable_grpc) == (8000, False)


# docs/operations.md's collision table, row by row: what `python -m runtime --help` must say
# for each.
COLLISION_ROWS = {
    "--model_name": ["--model_name NAME", "--served-model-name", "aliases"],
    "--model_dir": ["--model_dir DIR", "--model.", "--model alone is accepted",
                    "both at once must agree"],
    "listeners": ["--http_port, --grpc_port, --ssl_certfile, --ssl_keyfile", "either spelling",
                  "--grpc-port == --grpc_port", "the ModelServer owns the listeners",
                  "vLLM's own gRPC server", "is not started"],
    "vLLM listener flags": ["--host, --port, --uds", "ignored (with a warning)"],
    "--workers": ["--workers", "Must be 1"],
    "pass-through": ["passed through unchanged", "--help-engine"],
}


def test_help_shows_the_collision_table() -> None:
    """README: "Where the two collide (`python -m runtime --help` says the same)"."""
    done = subprocess.run([sys.executable, "-m", "runtime", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    _, title, table = done.stdout.partition("Where KServe and vLLM flags collide")
    assert title, f"--help shows no collision table:\n{done.stdout}"
    text = " ".join(table.split())  # the table after its title; line breaks do not matter
    missing = {row: gone for row, phrases in COLLISION_ROWS.items()
               if (gone := [p for p in phrases if p not in text])}
    assert not missing, f"--help's collision table lacks {missing}"


GRPC_SPELLINGS = [["--grpc-port", "9001"], ["--grpc-port=9001"], ["--grpc_port", "9001"],
                  ["--grpc_port=9001"]]


@pytest.mark.parametrize("flag", GRPC_SPELLINGS, ids=lambda f: f[0])
@pytest.mark.parametrize("mode", ["runtime", "serve"])
def test_vllm_grpc_server_is_not_started(mode: str, flag: list[str], tmp_path: Path) -> None:
    """README: `--grpc_port` is KServe's in either spelling; vLLM's own gRPC server not started."""
    from runtime.engine.vllm_args import parse_engine_args

    if mode == "runtime":
        settings = cli.parse(["--model_name", "m", "--model_dir", str(tmp_path), *flag])
    else:
        settings = serve_cli.parse([str(tmp_path), *flag])
    assert (settings.grpc_port, settings.enable_grpc) == (9001, True)
    assert not any("grpc" in token for token in settings.engine_argv), settings.engine_argv
    engine = parse_engine_args(settings)  # the namespace the engine is built from
    assert engine.grpc_port is None  # vLLM's Rust frontend gRPC services: off
    assert engine.grpc is False  # vLLM's Python gRPC server: off
