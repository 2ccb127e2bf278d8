"""Engine arguments: vLLM's own serve parser, and the runtime's CPU defaults on top of it.

Why a module of its own: the rule "the runtime builds exactly the engine plain vLLM builds from
the same arguments" lives here and only here, and is tested by resolving both engine
configurations (tests/runtime/test_engine_args.py) without starting either engine.

The one deliberate difference: on a CPU, when the command line gives neither ``--dtype`` nor an
eager flag (``--enforce-eager`` / ``--no-enforce-eager``, in any spelling vLLM's parser accepts),
the runtime uses ``--dtype float32 --enforce-eager``. Given either, every engine argument is
vLLM's own default. bfloat16 in eager mode gives wrong output on these CPUs
(docs/platform-notes.md), so that combination is refused at start-up (``EngineArgsError``),
whether bfloat16 was asked for or is what ``--dtype auto`` resolves to for the model.
"""

from __future__ import annotations

import logging
import math
from argparse import Namespace
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.platforms import current_platform
from vllm.utils.argparse_utils import FlexibleArgumentParser

from runtime.errors import ClientError
from runtime.settings import EngineArgsError, RuntimeSettings

logger = logging.getLogger(__name__)

# What the runtime uses on a CPU when the command line sets neither of these engine arguments.
CPU_DEFAULTS: dict[str, Any] = {"dtype": "float32", "enforce_eager": True}


class _Unset:
    """Default of the CPU-defaulted arguments while parsing: tells "not given" from "given as
    vLLM's default" (``--dtype auto``), whatever spelling, abbreviation or ``--config`` file
    gave it."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()

# vLLM's explicit --dtype choices; anything else (``auto``) is resolved from the model's config.
_DTYPE_NAMES = {"bfloat16": "bfloat16", "float16": "float16", "half": "float16",
                "float32": "float32", "float": "float32"}


def engine_parser() -> FlexibleArgumentParser:
    """vLLM's own serve parser: every engine argument, with vLLM's help text."""
    return make_arg_parser(FlexibleArgumentParser(prog="python -m runtime", add_help=False))


def engine_help() -> str:
    """vLLM's engine arguments, for ``python -m runtime --help-engine``."""
    return engine_parser().format_help()


def parse_engine_args(settings: RuntimeSettings) -> Namespace:
    """Build vLLM's argument namespace from the runtime settings and the pass-through argv.

    KServe's ``--model_dir``/``--model_name`` become ``--model``/``--served-model-name``. The
    namespace is the one vLLM's server parses from the same arguments, except for the CPU
    defaults (module docstring). Raises ``EngineArgsError`` for bfloat16 + eager on a CPU.
    """
    argv = list(settings.engine_argv)
    names = [settings.model_name, *settings.served_model_aliases]
    argv += ["--model", settings.model_dir, "--served-model-name", *names]
    parser = engine_parser()
    vllm_defaults = {name: parser.get_default(name) for name in CPU_DEFAULTS}
    parser.set_defaults(**dict.fromkeys(CPU_DEFAULTS, _UNSET), shutdown_timeout=_UNSET)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the reason
        raise ClientError(f"invalid engine arguments: {' '.join(settings.engine_argv)}") from exc
    given = {name for name in CPU_DEFAULTS if getattr(args, name) is not _UNSET}
    cpu = current_platform.is_cpu()
    defaults = CPU_DEFAULTS if cpu and not given else vllm_defaults
    for name in CPU_DEFAULTS.keys() - given:
        setattr(args, name, defaults[name])
    if args.shutdown_timeout is _UNSET:
        # vLLM's --shutdown-timeout is its drain: on SIGTERM the engine-core process finishes
        # its in-flight requests (0: it aborts them). A signal sent to the process group
        # (Ctrl-C, systemd, `kill -- -PID`) reaches the engine core too; with 0 it would cut
        # off the requests the runtime's drain is waiting for. So it is the drain's timeout.
        args.shutdown_timeout = math.ceil(settings.drain_timeout)
    validate_parsed_serve_args(args)
    if cpu and args.enforce_eager:
        dtype = resolved_dtype(args)
        if dtype == "bfloat16":
            what = "--dtype bfloat16 with --enforce-eager" if args.dtype == "bfloat16" else (
                f"--enforce-eager with --dtype {args.dtype} (bfloat16 for this model)")
            raise EngineArgsError(
                f"{what} gives wrong output on CPUs: use --dtype float32, or drop "
                "--enforce-eager (vLLM then compiles the model)")
    return args


def resolved_dtype(args: Namespace) -> str:
    """The dtype vLLM will run the model in (``auto`` resolved from the model's config, as
    vLLM does for this platform), e.g. ``"bfloat16"``; ``""`` if the model's config cannot be
    read now (vLLM reports that itself when the engine starts)."""
    named = _DTYPE_NAMES.get(str(args.dtype))
    if named:
        return named
    try:
        config = AsyncEngineArgs.from_cli_args(args).create_model_config()
    except Exception:  # not this check's error to report
        logger.debug("could not resolve --dtype %s before start-up", args.dtype, exc_info=True)
        return ""
    return str(config.dtype).removeprefix("torch.")
