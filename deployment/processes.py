"""Child processes that stand in for containers, and a clean way to end all of them.

Why a module of its own: a container's command may start grandchildren that leave its process
group (Ray's workers call ``setpgid``), so "kill the process group" is not enough; every
process of the container's session must go, and nothing outside it may be touched.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on right now (bound by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_members(sid: int) -> list[int]:
    """PIDs of every live process whose session id is ``sid`` (read from /proc)."""
    return _members(3, sid)


def group_members(pgid: int) -> list[int]:
    """PIDs of every live process in process group ``pgid`` (read from /proc)."""
    return _members(2, pgid)


def _members(field_index: int, wanted: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[field_index]) == wanted and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


class ChildProcess:
    """A command started in its own session, logging to a file, stoppable as a whole."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log_path: Path,
                 cwd: str | None = None) -> None:
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=self.cwd, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def exit_code(self) -> int | None:
        """None while running, else the exit code."""
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of the log, preceded by its first error line (the root cause is
        usually far above a long traceback, e.g. in vLLM's engine process)."""
        try:
            log = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        first = next((ln for ln in log if re.search(r"\b\w*(Error|Exception)\b:", ln)), None)
        tail = log[-lines:]
        if first and first not in tail:
            tail = [f"first error: {first}", "...", *tail]
        return "\n".join(tail)

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM the session, SIGKILL what is left after ``grace`` seconds; the exit code."""
        if self.proc is None:
            return None
        sid = self.proc.pid  # session leader: sid == pid
        if self.proc.poll() is None:
            _signal_session(sid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 5
        while session_members(sid) and time.monotonic() < deadline:
            _signal_session(sid, signal.SIGKILL)
            time.sleep(0.2)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return self.proc.returncode


def _signal_session(sid: int, sig: int) -> None:
    try:
        os.killpg(sid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in session_members(sid):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
