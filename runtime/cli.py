"""Command line of ``python -m runtime``: KServe's flags plus every vLLM engine argument.

Why here and not in kserve: kserve's own parser is built at import time and would treat vLLM's
flags as unknown; vLLM's parser knows nothing of KServe's contract (``--model_name``,
``--model_dir``, ``--http_port``, ``--grpc_port``). This module splits one command line into
``RuntimeSettings`` (KServe's side) and an engine argv (vLLM's side), and says in ``--help``
how names that both sides know are resolved.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from pydantic import SecretStr

from runtime.auth import ApiKeyError, check_not_empty
from runtime.limits import Limits
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


class EngineArgsError(ValueError):
    """Engine arguments the runtime refuses at start-up (bfloat16 with eager mode on a CPU);
    ``python -m runtime`` prints it as one line and exits with 2."""


# vLLM listener flags that make no sense behind the ModelServer; each takes one value.
IGNORED_VLLM_FLAGS = ("--host", "--port", "--uds")


def build_parser() -> argparse.ArgumentParser:
    """The runtime's own parser (KServe's flags + runtime limits); vLLM's flags are separate."""
    p = argparse.ArgumentParser(
        prog="python -m runtime",
        description="KServe ModelServer serving an LLM with vLLM over OpenAI and Open Inference "
        "Protocol v2 (REST, gRPC, generate extension).",
        epilog=COLLISIONS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `--model` must not abbreviate `--model_name`
    )
    p.add_argument("--model_name", default="model", help="served model name (KServe)")
    p.add_argument("--model_dir", default=None, help="model folder; default /mnt/models (KServe)")
    p.add_argument("--http_port", type=int, default=8080, help="HTTP port (KServe)")
    p.add_argument("--grpc_port", type=int, default=8081, help="gRPC port (KServe)")
    p.add_argument("--enable_grpc", type=_bool, default=True, help="serve gRPC v2 (KServe)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers; must be 1 (KServe)")
    p.add_argument("--max_threads", type=int, default=4, help="gRPC threads (KServe)")
    p.add_argument("--enable_docs_url", type=_bool, default=False,
                   help="accepted for KServe compatibility; no /docs route is served")
    p.add_argument("--enable_latency_logging", type=_bool, default=False,
                   help="a log line per v2 request with latencies (KServe)")
    p.add_argument("--configure_logging", type=_bool, default=True, help="(KServe)")
    p.add_argument("--log_config_file", default=None, help="(KServe)")
    p.add_argument("--access_log_format", default=None, help="(KServe)")
    p.add_argument("--event_loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    p.add_argument("--timeout_keep_alive", type=int, default=65, help="(KServe)")
    p.add_argument("--ssl_certfile", default=None, help="TLS certificate (KServe)")
    p.add_argument("--ssl_keyfile", default=None, help="TLS key (KServe)")
    p.add_argument("--enable_ssl_refresh", type=_bool, nargs="?", const=True, default=False,
                   help="reload the certificate and key when their files change (vLLM's "
                        "--enable-ssl-refresh): new connections get the new certificate")
    p.add_argument("--max_request_bytes", type=int, default=8 * 1024 * 1024,
                   help="largest accepted HTTP body; larger gets 413")
    p.add_argument("--health_check_interval", type=float, default=1.0,
                   help="seconds between engine health checks")
    p.add_argument("--api_key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but health and "
                        "metrics (gRPC: 'authorization' metadata, every RPC but the health "
                        "ones). Also read from $API_KEY. vLLM's --api-key is this flag.")
    p.add_argument("--api_key_file", default=None,
                   help="read the key from this file (a mounted Kubernetes Secret); a changed "
                        "file takes effect without a restart")
    p.add_argument("--operator_key", default=None,
                   help="the operator's key: repository load/unload (REST and gRPC) and the "
                        "operator routes need it, and only it (the inference key gets 403 "
                        "there); it must differ from --api_key. Also read from "
                        "$OPERATOR_API_KEY")
    p.add_argument("--operator_key_file", default=None,
                   help="read the operator key from this file (a mounted Secret); a changed "
                        "file takes effect without a restart")
    p.add_argument("--enable_operator_routes", type=_bool, default=False,
                   help="serve vLLM's operator routes under /openai (LoRA load/unload, "
                        "sleep/wake, elastic scaling, profiling); requires the operator key")
    p.add_argument("--enable_adapter_loading", type=_bool, default=False,
                   help="load and unload LoRA adapters at run time through the model "
                        "repository extension (needs --enable-lora, the operator key and "
                        "--allowed_adapter_dirs)")
    p.add_argument("--allowed_adapter_dirs", action="append", default=None, metavar="DIR[,DIR]",
                   help="folders adapters may be loaded from at run time (comma-separated, "
                        "or the flag repeated): a lora_path must resolve, symlinks and '..' "
                        "resolved, under one of them; default none, so nothing loads")
    p.add_argument("--max_adapters", type=int, default=32,
                   help="most LoRA adapters served at once, static and loaded (default 32)")
    p.add_argument("--protect_metrics", type=_bool, default=False,
                   help="require the API key on /metrics too")
    p.add_argument("--max_waiting_requests", type=int, default=None,
                   help="engine requests allowed to wait beyond the running batch; past it "
                        "429 / RESOURCE_EXHAUSTED with Retry-After (default: unbounded)")
    p.add_argument("--drain_timeout", type=float, default=25.0,
                   help="on SIGTERM: readiness turns false, new requests get 503, in-flight "
                        "requests get this many seconds to finish (fits Kubernetes' 30 s grace)")
    p.add_argument("--max_batch_size", type=int, default=256, help="v2 prompts per request")
    p.add_argument("--max_n", type=int, default=16, help="largest OpenAI n")
    p.add_argument("--max_tokens_limit", type=int, default=None,
                   help="largest max_tokens a request may ask for (default: the context)")
    p.add_argument("--default_max_tokens", type=int, default=None,
                   help="max_tokens of a request that gives none (default: --max_tokens_limit "
                        "when set, else up to the context)")
    p.add_argument("--max_stop_sequences", type=int, default=32, help="most stop sequences")
    p.add_argument("--max_token_ids", type=int, default=1024,
                   help="most entries in each of logit_bias, allowed_token_ids, stop_token_ids")
    p.add_argument("--max_bad_words", type=int, default=128, help="most bad_words entries")
    p.add_argument("--help-engine", "--help_engine", action="store_true",
                   help="list vLLM's engine arguments")
    return p


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def _secret(value: str | None) -> SecretStr | None:
    return SecretStr(value) if value else None


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
    if args.help_engine:
        from runtime.engine.vllm_args import engine_help

        print(engine_help())
        raise SystemExit(0)
    try:  # keys fail closed: a source given but empty is an error, not "no key"
        check_not_empty(args.api_key, args.api_key_file)
    except ApiKeyError as exc:
        parser.error(str(exc))
    if args.api_key and args.api_key_file:
        parser.error("--api_key and --api_key_file are mutually exclusive")
    try:  # the operator's key, the same way
        check_not_empty(args.operator_key, args.operator_key_file, "OPERATOR_API_KEY",
                        "operator_key")
    except ApiKeyError as exc:
        parser.error(str(exc))
    if args.operator_key and args.operator_key_file:
        parser.error("--operator_key and --operator_key_file are mutually exclusive")
    adapter_dirs = _adapter_dirs(parser, args.allowed_adapter_dirs)
    if args.enable_adapter_loading and not adapter_dirs:
        parser.error("--enable_adapter_loading needs --allowed_adapter_dirs: the folders "
                     "adapters may be loaded from")
    if args.max_adapters < 0:
        parser.error("--max_adapters must be 0 or more")
    if args.workers != 1:
        parser.error("--workers must be 1: the vLLM engine lives in the server process")
    for flag in IGNORED_VLLM_FLAGS:
        engine_argv, dropped = _take(engine_argv, flag)
        if dropped:
            logger.warning("ignoring vLLM's %s %s: the ModelServer listens on --http_port", flag, dropped)
    engine_argv, models = _take(engine_argv, "--model")
    model_dir = args.model_dir
    if models:
        if model_dir is not None and models[-1] != model_dir:
            parser.error(f"--model {models[-1]} disagrees with --model_dir {model_dir}")
        model_dir = models[-1]
    model_dir = model_dir or "/mnt/models"
    if model_dir.startswith(("/", ".")) and not os.path.isdir(model_dir):
        parser.error(f"model folder {model_dir} does not exist (--model_dir)")
    engine_argv, aliases = _take(engine_argv, "--served-model-name", many=True)
    return RuntimeSettings(
        model_name=args.model_name,
        model_dir=model_dir,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=args.enable_grpc,
        max_threads=args.max_threads,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        max_request_bytes=args.max_request_bytes,
        health_check_interval=args.health_check_interval,
        served_model_aliases=list(dict.fromkeys(
            n for a in aliases for n in a.split() if n != args.model_name)),
        engine_argv=engine_argv,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        enable_ssl_refresh=args.enable_ssl_refresh,
        api_key=_secret(args.api_key or (None if args.api_key_file else os.environ.get("API_KEY"))),
        api_key_file=args.api_key_file,
        operator_key=_secret(args.operator_key or (
            None if args.operator_key_file else os.environ.get("OPERATOR_API_KEY"))),
        operator_key_file=args.operator_key_file,
        enable_operator_routes=args.enable_operator_routes,
        enable_adapter_loading=args.enable_adapter_loading,
        allowed_adapter_dirs=adapter_dirs,
        max_adapters=args.max_adapters,
        protect_metrics=args.protect_metrics,
        max_waiting_requests=args.max_waiting_requests,
        drain_timeout=args.drain_timeout,
        limits=Limits(max_batch_size=args.max_batch_size, max_n=args.max_n,
                      max_tokens=args.max_tokens_limit,
                      max_stop_sequences=args.max_stop_sequences,
                      max_token_ids=args.max_token_ids, max_bad_words=args.max_bad_words,
                      default_max_tokens=args.default_max_tokens),
    )
