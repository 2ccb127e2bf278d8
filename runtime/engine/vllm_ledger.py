"""Who starts vLLM engines: a ledger line per engine start, and a switch that forbids them.

Why a vLLM plugin: an engine can be started by many routes (``python -m runtime``, plain
``vllm serve``, a runner's ``bash -c`` template, a benchmark tool, Ray), but every one of them
ends in vLLM's engine-core process, which loads the ``vllm.general_plugins`` entry points
(pyproject.toml). Counting there sees every start, whoever launched it; refusing there stops
a start before it costs a minute of CPU.

- ``KSERVE_LLM_ENGINE_LEDGER=PATH``: the engine core appends one line to ``PATH``: time, its
  pid, and its launcher's pid and command line (keys redacted). The test suite prints the count at its end.
- ``KSERVE_LLM_NO_ENGINE=1``: the engine core raises instead of starting, so the process that
  asked for it fails at once and says why (the fast test tier runs with it set).
"""

from __future__ import annotations

import multiprocessing
import os
import time

LEDGER_ENV = "KSERVE_LLM_ENGINE_LEDGER"
FORBID_ENV = "KSERVE_LLM_NO_ENGINE"


class EngineForbiddenError(RuntimeError):
    """An engine start was refused by ``KSERVE_LLM_NO_ENGINE``."""


def _is_engine_core() -> bool:
    # vLLM names the engine-core process "EngineCore" ("EngineCore_DP<n>" with data parallel).
    return multiprocessing.current_process().name.startswith("EngineCore")


def _launcher() -> str:
    """The launcher's command line, keys redacted (it may carry ``--api_key``)."""
    from runtime.auth import redact_argv

    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    return " ".join(redact_argv([a for a in argv if a]))


def record() -> None:
    """In an engine-core process: append the start to the ledger, then refuse it if forbidden.
    Anywhere else (the API server, the model worker, a tool): nothing."""
    if not _is_engine_core():
        return
    path = os.environ.get(LEDGER_ENV)
    forbidden = os.environ.get(FORBID_ENV, "") not in ("", "0", "false")
    if path:
        line = (f"{time.strftime('%H:%M:%S')} pid={os.getpid()} launcher={os.getppid()} "
                f"{'REFUSED ' if forbidden else ''}{_launcher()}"[:2000])
        with open(path, "a", encoding="utf-8") as f:
            f.write(line.replace("\n", " ") + "\n")
    if forbidden:
        raise EngineForbiddenError(f"{FORBID_ENV} is set: this environment starts no vLLM engine")
