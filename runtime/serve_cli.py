"""``python -m runtime serve MODEL [vllm serve's arguments]``: the ``vllm serve`` contract.

Why: KServe's LLMInferenceService runs its pods with ``vllm serve /mnt/models
--served-model-name NAME ... --port 8000 [--ssl-certfile ... --ssl-keyfile ...
--enable-ssl-refresh]`` and probes ``/health``; an image is a drop-in there only if that exact
command works. This module turns such a command line into the runtime's own (``runtime.cli``)
so that everything else (pipeline, limits, key, drain, metrics) is the same server: OpenAI at
``/v1/...`` (``/v1/models`` is OpenAI's list here, not KServe's v1 list), ``/health``, and the
runtime's v2 REST and generate routes on the same port. gRPC is off unless ``--grpc_port`` is
given (``vllm serve`` has none).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from runtime import cli
from runtime.settings import EngineArgsError, RuntimeSettings

DEFAULT_PORT = 8000
# vllm serve's flags that mean a runtime setting (each takes one value). --api-key,
# --ssl-certfile, --ssl-keyfile and --enable-ssl-refresh are the runtime's own flags already.
_RENAMED = {"--port": "--http_port", "--shutdown-timeout": "--drain_timeout"}
# vLLM's access-log switches (KServe's template passes them) have no meaning for KServe's
# access log.
_DROPPED = ("--disable-access-log-for-endpoints",)
_DROPPED_SWITCHES = ("--disable-uvicorn-access-log",)
# The ModelServer binds every interface (as vllm serve in a pod does) over TCP, and checks no
# client certificates: a flag asking for less exposure is refused, never silently ignored.
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")
_REFUSED = {
    "--uds": "serving on a Unix socket",
    "--ssl-ca-certs": "client certificates (mutual TLS)",
    "--ssl-cert-reqs": "client certificates (mutual TLS)",
}


def _refuse_unsupported(argv: list[str]) -> list[str]:
    """Raise ``EngineArgsError`` (exit 2) for a security flag this server cannot honour;
    return ``argv`` without an accepted ``--host`` (a wildcard address)."""
    rest, hosts = cli._take(argv, "--host")
    for host in hosts:
        if host not in _WILDCARD_HOSTS:
            raise EngineArgsError(
                f"--host {host}: this server listens on every interface (as vllm serve in a "
                "pod); restrict who reaches the port with a NetworkPolicy, or drop --host")
    for flag, what in _REFUSED.items():
        if any(t == flag or t.startswith(flag + "=") for t in rest):
            raise EngineArgsError(f"{flag}: {what} is not supported by this server; refusing "
                                  "to start rather than ignore a security setting")
    return rest


def _split(argv: list[str]) -> tuple[str | None, list[str]]:
    """The positional MODEL (vllm serve's ``model_tag``) and the rest."""
    if argv and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    return None, argv


def parse(argv: Sequence[str]) -> RuntimeSettings:
    """Settings for ``serve``'s arguments (``argv`` without the word ``serve``)."""
    # KServe's template leaves a lone " " argument (a continued line); vllm serve ignores it.
    model, rest = _split([tok for tok in argv if tok.strip()])
    rest = _refuse_unsupported(rest)
    key = os.environ.get("VLLM_API_KEY")  # vllm serve's own variable for --api-key
    if key is not None and not os.environ.get("API_KEY") and not any(
            t == "--api-key" or t.startswith(("--api-key=", "--api_key")) for t in rest):
        rest += ["--api_key", key]  # an empty value is refused there, as an empty $API_KEY
    rest, names = cli._take(rest, "--served-model-name", many=True)
    names = [n for value in names for n in value.split()]
    for flag in _DROPPED:
        rest, _ = cli._take(rest, flag)
    rest = [tok for tok in rest if tok not in _DROPPED_SWITCHES]
    out: list[str] = []
    for tok in rest:
        name, eq, value = tok.partition("=")
        out.append(_RENAMED.get(name, name) + eq + value if name in _RENAMED else tok)
    if model is not None:
        out += ["--model_dir", model]
    if not any(t == "--http_port" or t.startswith("--http_port=") for t in out):
        out += ["--http_port", str(DEFAULT_PORT)]
    grpc = any(t.startswith("--") and t[2:].replace("-", "_").startswith("grpc_port")
               for t in out)
    if not grpc:
        out += ["--enable_grpc", "false"]
    settings = cli.parse(out + ["--model_name", names[0] if names else (model or "/mnt/models")]
                         + (["--served-model-name", *names[1:]] if len(names) > 1 else []))
    return settings.model_copy(update={"vllm_serve": True})
