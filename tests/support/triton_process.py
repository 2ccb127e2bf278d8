"""tritonclient in a child process, one way for every test that needs it.

Why a child process: ``tritonclient.grpc`` registers the same protobuf package as kserve, so
the two cannot share the test process. Why this helper: at interpreter exit tritonclient's
``__del__`` closes its gRPC channel, which can block forever after the last answer (seen in CI:
a client that had printed everything, hanging until pytest's timeout, with the failure then
pinned on the server). A script run here ends with ``done()`` (flush, then ``os._exit``), and a
script that hangs anyway dumps every thread's stack and exits before the test's timeout, so
the failure shows where it hung.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PRELUDE = textwrap.dedent("""
    import faulthandler, os, sys
    faulthandler.dump_traceback_later(int(os.environ["TRITON_CLIENT_HANG_S"]), exit=True)

    def done():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
""")


def client_code(script: str) -> str:
    """``script`` with the prelude (``done``, the hang dump) and a final ``done()``."""
    return PRELUDE + textwrap.dedent(script) + "\ndone()\n"


def client_env(timeout: float) -> dict[str, str]:
    """The environment of a client expected to end within ``timeout`` seconds."""
    return {**os.environ, "TRITON_CLIENT_HANG_S": str(max(10, int(timeout) - 20))}


def run_client(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``args``; assert it exited 0 (its stderr, a hang's stacks included,
    is the assertion's message)."""
    out = subprocess.run([sys.executable, "-c", client_code(script), *args],
                         capture_output=True, text=True, timeout=timeout,
                         env=client_env(timeout))
    assert out.returncode == 0, out.stderr[-4000:]
    return out
