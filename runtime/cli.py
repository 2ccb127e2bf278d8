"""Command line of ``python -m runtime``: KServe's flags plus every vLLM engine argument.

Why here and not in kserve: kserve's own parser is built at import time and would treat vLLM's
flags as unknown; vLLM's parser knows nothing of KServe's contract (``--model_name``,
``--model_dir``, ``--http_port``, ``--grpc_port``). This module splits one command line into
``RuntimeSettings`` (KServe's side) and an engine argv (vLLM's side), and says in ``--help``
how names that both sides know are resolved.

Every flag of the runtime's own is built from a field of ``RuntimeSettings`` (``runtime.settings``,
``runtime.limits``): its name, type, choices, default and help are the field's, so a default is
written once. The parser's defaults are all ``argparse.SUPPRESS``: a flag left out is a field
left to its model's default. Only KServe's flags that the runtime accepts without using
(``KSERVE_ONLY``) are declared here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from runtime.auth import ApiKeyError, check_not_empty
from runtime.settings import RuntimeSettings

logger = logging.getLogger(__name__)

COLLISIONS = """\
Where KServe and vLLM flags collide:
  --model_name NAME   KServe's. Becomes vLLM's --served-model-name (first name); names given
                      with --served-model-name are served as extra aliases.
  --model_dir DIR     KServe's. Becomes vLLM's --model. --model alone is accepted as --model_dir;
                      both at once must agree.
  --http_port, --grpc_port, --ssl_certfile, --ssl_keyfile
                      KServe's, in either spelling (--grpc-port == --grpc_port): the ModelServer
                      owns the listeners. vLLM's own gRPC server (--grpc-port) is not started.
  --host, --port, --uds
                      vLLM's listener flags are ignored (with a warning): use --http_port.
  --workers           Must be 1: the engine lives in the server process.
Every other argument is a vLLM engine argument and is passed through unchanged
(`python -m runtime --help-engine` lists them): the engine is the one vLLM's own server builds
from the same arguments, with one exception. On a CPU, when neither --dtype nor an eager flag
(--enforce-eager, --no-enforce-eager) is given, the runtime uses --dtype float32
--enforce-eager; given either, vLLM's defaults hold (--dtype auto, compiled). bfloat16 with
--enforce-eager on a CPU (asked for, or what --dtype auto resolves to) is refused at start:
it produces wrong output there.
"""


# vLLM listener flags that make no sense behind the ModelServer; each takes one value.
IGNORED_VLLM_FLAGS = ("--host", "--port", "--uds")


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


# KServe's flags that the runtime accepts, so that KServe's commands start, and does not keep.
KSERVE_ONLY: dict[str, dict[str, Any]] = {
    "workers": {"type": int, "help": "uvicorn workers; must be 1 (KServe)"},
    "enable_docs_url": {"type": _bool, "help": "accepted for KServe compatibility; no /docs "
                                               "route is served"},
    "configure_logging": {"type": _bool, "help": "accepted for KServe compatibility; the "
                                                 "runtime configures its own logging"},
    "log_config_file": {"help": "accepted for KServe compatibility; the runtime configures "
                                "its own logging"},
}


@dataclass(frozen=True)
class Flag:
    """One runtime flag: ``--name``, the settings field it sets (``path``), that field."""

    name: str
    path: tuple[str, ...]
    field: FieldInfo

    @property
    def extra(self) -> dict[str, Any]:
        return _extra(self.field)


def _extra(field: FieldInfo) -> dict[str, Any]:
    """The field's command-line particulars (``runtime.settings``'s docstring lists them)."""
    extra = field.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def flags(model: type[BaseModel] = RuntimeSettings, prefix: tuple[str, ...] = ()) -> list[Flag]:
    """The runtime's flags, one per field of ``model``; a field holding a model (``limits``)
    gives a flag per field of that model."""
    out: list[Flag] = []
    for name, field in model.model_fields.items():
        flag = Flag(name, (*prefix, name), field)
        if flag.extra.get("cli", True) is False:
            continue
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += flags(field.annotation, flag.path)
        else:
            out.append(Flag(str(flag.extra.get("flag", name)), flag.path, field))
    return out


def _add(parser: argparse.ArgumentParser, flag: Flag) -> None:
    """``--name``, parsed as the field's type says, with the field's description and default
    as its help. Its parser default is SUPPRESS: a flag not given is not in the namespace."""
    field, extra = flag.field, flag.extra
    kind = field.annotation
    if get_origin(kind) in (Union, types.UnionType):  # X | None: X
        [kind] = [arg for arg in get_args(kind) if arg is not type(None)]
    kw: dict[str, Any] = {"dest": flag.name, "default": argparse.SUPPRESS}
    if get_origin(kind) is list:
        kw["action"] = "append"
    elif get_origin(kind) is Literal:
        kw["choices"] = list(get_args(kind))
    elif kind is bool:
        kw["type"] = _bool
        if extra.get("optional_value"):  # `--flag` alone means true, as vLLM's switches
            kw.update(nargs="?", const=True)
    elif kind in (int, float):
        kw["type"] = kind
    elif kind not in (str, SecretStr):
        raise TypeError(f"no command-line type for {flag.name}: {kind}")
    if "metavar" in extra:
        kw["metavar"] = extra["metavar"]
    parser.add_argument(f"--{flag.name}", help=_help(field, extra), **kw)


def _help(field: FieldInfo, extra: dict[str, Any]) -> str:
    text = (field.description or "").replace("%", "%%")
    default = field.get_default(call_default_factory=True)
    if isinstance(default, bool):
        text += f" (default {str(default).lower()})"
    elif default is not None and not isinstance(default, list):
        text += f" (default {default})"
    if "env" in extra:
        text += f" Also read from ${extra['env']}."
    return text


def build_parser() -> argparse.ArgumentParser:
    """The runtime's own parser (a flag per settings field + KServe's accepted flags); vLLM's
    flags are separate."""
    p = argparse.ArgumentParser(
        prog="python -m runtime",
        description="KServe ModelServer serving an LLM with vLLM over OpenAI and Open Inference "
        "Protocol v2 (REST, gRPC, generate extension).",
        epilog=COLLISIONS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `--model` must not abbreviate `--model_name`
        argument_default=argparse.SUPPRESS,
    )
    for flag in flags():
        _add(p, flag)
    for name, kw in KSERVE_ONLY.items():
        p.add_argument(f"--{name}", **kw)
    p.add_argument("--help-engine", "--help_engine", action="store_true",
                   help="list vLLM's engine arguments")
    return p


def _adapter_dirs(parser: argparse.ArgumentParser, given: list[str] | None) -> list[str]:
    """``--allowed_adapter_dirs`` values (each may hold several, comma-separated): existing
    folders, in order, once each. An empty value is an error, not "no folder"."""
    dirs: list[str] = []
    for value in given or ():
        parts = [part.strip() for part in value.split(",")]
        if not any(parts):
            parser.error("--allowed_adapter_dirs is empty: give a folder, or leave the flag out")
        for part in filter(None, parts):
            if not os.path.isdir(part):
                parser.error(f"--allowed_adapter_dirs: {part} is not a folder")
            if part not in dirs:
                dirs.append(part)
    return dirs


def _normalise(argv: Sequence[str], own: set[str]) -> list[str]:
    """Rewrite ``--grpc-port`` style spellings of the runtime's own flags to ``--grpc_port``."""
    out = []
    for tok in argv:
        if tok.startswith("--"):
            name, eq, val = tok[2:].partition("=")
            if name.replace("-", "_") in own:
                tok = "--" + name.replace("-", "_") + eq + val
        out.append(tok)
    return out


def _take(argv: list[str], flag: str, many: bool = False) -> tuple[list[str], list[str]]:
    """Remove ``flag VALUE`` / ``flag=VALUE`` occurrences (``many``: ``flag V1 V2 ...``, as
    vLLM's ``nargs="+"`` flags take); return (rest, values)."""
    rest, values, i = [], [], 0
    while i < len(argv):
        tok = argv[i]
        if tok == flag and i + 1 < len(argv):
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
                if not many:
                    break
            continue
        if tok.startswith(flag + "="):
            values.append(tok.split("=", 1)[1])
        else:
            rest.append(tok)
        i += 1
    return rest, values


def parse(argv: Sequence[str] | None = None) -> RuntimeSettings:
    """Split the command line into runtime settings and the vLLM engine argv."""
    parser = build_parser()
    own = {a.dest for a in parser._actions if a.option_strings}
    args, engine_argv = parser.parse_known_args(_normalise(sys.argv[1:] if argv is None else argv, own))
    given: dict[str, Any] = vars(args)  # only what the command line gave: defaults SUPPRESS
    if given.pop("help_engine", False):
        from runtime.engine.vllm_args import engine_help

        print(engine_help())
        raise SystemExit(0)
    for key in ("api_key", "operator_key"):  # keys fail closed: given but empty is an error
        env = str(_extra(RuntimeSettings.model_fields[key])["env"])
        flag, file = given.get(key), given.get(f"{key}_file")
        try:
            check_not_empty(flag, file, env, key)
        except ApiKeyError as exc:
            parser.error(str(exc))
        if flag and file:
            parser.error(f"--{key} and --{key}_file are mutually exclusive")
        if flag is None and file is None and os.environ.get(env):
            given[key] = os.environ[env]
    if "allowed_adapter_dirs" in given:
        given["allowed_adapter_dirs"] = _adapter_dirs(parser, given["allowed_adapter_dirs"])
    if given.get("enable_adapter_loading") and not given.get("allowed_adapter_dirs"):
        parser.error("--enable_adapter_loading needs --allowed_adapter_dirs: the folders "
                     "adapters may be loaded from")
    if "max_adapters" in given and given["max_adapters"] < 0:
        parser.error("--max_adapters must be 0 or more")
    if "workers" in given and given["workers"] != 1:
        parser.error("--workers must be 1: the vLLM engine lives in the server process")
    for flag in IGNORED_VLLM_FLAGS:
        engine_argv, dropped = _take(engine_argv, flag)
        if dropped:
            logger.warning("ignoring vLLM's %s %s: the ModelServer listens on --http_port", flag, dropped)
    engine_argv, models = _take(engine_argv, "--model")
    if not given.get("model_dir", True):  # `--model_dir=` is the default folder
        del given["model_dir"]
    if models:
        if "model_dir" in given and models[-1] != given["model_dir"]:
            parser.error(f"--model {models[-1]} disagrees with --model_dir {given['model_dir']}")
        given["model_dir"] = models[-1]
    engine_argv, aliases = _take(engine_argv, "--served-model-name", many=True)
    values: dict[str, Any] = {"engine_argv": engine_argv}
    # vLLM's tracing flag stays in the engine argv (vLLM exports its own spans) and is read here
    # too (the runtime's span of each request), in either spelling.
    endpoints = [v for spelling in ("--otlp-traces-endpoint", "--otlp_traces_endpoint")
                 for v in _take(list(engine_argv), spelling)[1]]
    if endpoints:
        values["otlp_traces_endpoint"] = endpoints[-1]
    for flag in flags():
        if flag.name in given:
            *outer, name = flag.path
            target = values
            for part in outer:
                target = target.setdefault(part, {})
            target[name] = given[flag.name]
    try:
        settings = RuntimeSettings(**values)
    except ValidationError as exc:
        parser.error(str(exc))
    if settings.model_dir.startswith(("/", ".")) and not os.path.isdir(settings.model_dir):
        parser.error(f"model folder {settings.model_dir} does not exist (--model_dir)")
    return settings.model_copy(update={"served_model_aliases": list(dict.fromkeys(
        n for a in aliases for n in a.split() if n != settings.model_name))})
