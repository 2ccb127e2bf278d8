"""Unit tier: one source per default. The runtime's flags are built from the settings models
(``runtime.settings``, ``runtime.limits``): ``runtime/cli.py`` holds no default of its own, every
flag left out is its field's default, and the help shows that default. Also: no import cycle
among the runtime's modules (issue 22)."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any

import pytest

from runtime import cli
from runtime.limits import Limits
from runtime.settings import RuntimeSettings
from tests.support.server import REPO

# Every flag name of `python -m runtime` (its spelling is a contract: manifests and docs use it).
FLAGS = {
    "model_name", "model_dir", "http_port", "grpc_port", "enable_grpc", "workers",
    "max_threads", "enable_docs_url", "enable_latency_logging", "configure_logging",
    "log_config_file", "access_log_format", "event_loop", "timeout_keep_alive", "ssl_certfile",
    "ssl_keyfile", "enable_ssl_refresh", "max_request_bytes", "health_check_interval", "api_key",
    "api_key_file", "operator_key", "operator_key_file", "enable_operator_routes",
    "enable_adapter_loading", "allowed_adapter_dirs", "max_adapters", "protect_metrics",
    "max_waiting_requests", "max_concurrent_rpcs", "max_stream_requests", "max_connections", "drain_timeout", "max_batch_size", "max_n", "max_tokens_limit",
    "default_max_tokens", "max_stop_sequences", "max_token_ids", "max_bad_words",
}


def test_cli_py_writes_no_default() -> None:
    """The only ``default=`` in runtime/cli.py is ``argparse.SUPPRESS``: every default lives
    in the settings models, once."""
    tree = ast.parse((REPO / "runtime" / "cli.py").read_text())
    literal = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg in ("default", "argument_default", "const") and ast.unparse(
                        kw.value) not in ("argparse.SUPPRESS", "True"):
                    literal.append(f"line {node.lineno}: {kw.arg}={ast.unparse(kw.value)}")
            if isinstance(node.func, ast.Attribute) and node.func.attr == "set_defaults":
                literal.append(f"line {node.lineno}: set_defaults")
    assert not literal, f"defaults written in runtime/cli.py: {literal}"


def test_every_parser_default_is_suppressed() -> None:
    parser = cli.build_parser()
    given = {a.dest: a.default for a in parser._actions if a.option_strings and a.dest != "help"}
    assert {dest for dest, default in given.items() if default is not argparse.SUPPRESS} == set()
    assert vars(parser.parse_args([])) == {}


def test_flag_names_are_kept() -> None:
    parser = cli.build_parser()
    names = {a.dest for a in parser._actions if a.option_strings} - {"help", "help_engine"}
    assert names == FLAGS


def test_every_settings_field_is_a_flag_or_says_it_is_not() -> None:
    """A new field gets a flag unless it is marked ``cli: False``; a flag sets its field."""
    by_path = {flag.path: flag.name for flag in cli.flags()}
    for name, field in RuntimeSettings.model_fields.items():
        if name == "limits":
            assert {p[1] for p in by_path if p[0] == "limits"} == set(Limits.model_fields)
        elif (field.json_schema_extra or {}).get("cli") is not False:  # type: ignore[union-attr]
            assert (name,) in by_path, name
    assert by_path[("limits", "max_tokens")] == "max_tokens_limit"


def _value(settings: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        settings = getattr(settings, part)
    return settings


def test_a_flag_left_out_is_its_fields_default(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("API_KEY", "OPERATOR_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    parsed = cli.parse(["--model_dir", str(tmp_path)])
    assert parsed == RuntimeSettings(model_dir=str(tmp_path))
    for flag in cli.flags():
        if flag.name != "model_dir":
            default = flag.field.get_default(call_default_factory=True)
            assert _value(parsed, flag.path) == default, flag.name


def test_help_shows_each_fields_default() -> None:
    text = " ".join(cli.build_parser().format_help().split())
    for flag in cli.flags():
        default = flag.field.get_default(call_default_factory=True)
        if default is None or default == []:
            continue
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert f"(default {shown})" in text, flag.name


@pytest.mark.parametrize("argv,expected", [
    (["--enable_grpc", "false"], {"enable_grpc": False}),
    (["--enable-grpc=no"], {"enable_grpc": False}),
    (["--protect_metrics", "true"], {"protect_metrics": True}),
    (["--enable_ssl_refresh"], {"enable_ssl_refresh": True}),
    (["--enable_ssl_refresh", "off"], {"enable_ssl_refresh": False}),
    (["--max_tokens_limit", "64", "--max_n=2"], {"limits.max_tokens": 64, "limits.max_n": 2}),
    (["--drain_timeout", "1.5", "--event_loop", "asyncio"],
     {"drain_timeout": 1.5, "event_loop": "asyncio"}),
])
def test_values_are_parsed_as_their_fields_type(tmp_path: Path, argv: list[str],
                                                expected: dict[str, Any]) -> None:
    settings = cli.parse(["--model_dir", str(tmp_path), *argv])
    for dotted, value in expected.items():
        assert _value(settings, tuple(dotted.split("."))) == value, dotted


@pytest.mark.parametrize("argv", [["--enable_grpc", "maybe"], ["--event_loop", "trio"],
                                  ["--http_port", "x"], ["--enable_grpc"]])
def test_bad_values_are_usage_errors(tmp_path: Path, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.parse(["--model_dir", str(tmp_path), *argv])
    assert done.value.code == 2


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The runtime modules ``path`` imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def test_no_import_cycles() -> None:
    files = {}
    for path in (REPO / "runtime").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {m: _imports(p, set(files)) - {m} for m, p in files.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen: set[str] = set()
        while stack:
            module, trail = stack.pop()
            for dep in graph[module]:
                if dep == start:
                    return [*trail, start]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*trail, dep]))
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m))]
    assert not cycles, f"import cycles: {cycles[0]}"
