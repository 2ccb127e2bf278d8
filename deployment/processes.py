"""Child processes on this machine: free ports, servers polled until healthy, clean stops.

Why one module: tests, the benchmark tool, the local deployment runner and the soak script all
start real processes (``python -m runtime``, plain vLLM, the explainer, a container's command)
and must find free ports, wait until a health URL answers, show the log when start-up fails,
and end every process they started, engine children included, and nothing else. It lives in
an installed package (``deployment``) so that ``benchmarks`` and ``scripts`` can import it;
``tests.support.server`` re-exports it for the test suites.

Why a session, not only the process group: a container's command may start grandchildren that
leave its process group (Ray's workers call ``setpgid``), so "kill the process group" is not
enough; every process of the child's session must go, and nothing outside it may be touched.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (bound by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def engine_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, plus what a process that builds a vLLM engine on this machine needs:
    a small CPU KV cache (without it vLLM's CPU build reserves most of the memory), no model
    hub, no usage statistics, unbuffered output (the log shows what happened up to a crash).
    Variables already set win; ``extra`` wins over everything."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit(143), so that ``finally`` blocks stop the servers this
    process started: they run in sessions of their own, which a signal to this process does
    not reach. For command-line tools that start servers (benchmarks, the soak)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def runtime_command(*, model_dir: Path | str, model_name: str, http_port: int, grpc_port: int,
                    extra: Sequence[str] = ()) -> list[str]:
    """The predictor's command line as KServe's ServingRuntime runs it (this interpreter)."""
    return [sys.executable, "-m", "runtime", f"--model_name={model_name}",
            f"--model_dir={model_dir}", f"--http_port={http_port}", f"--grpc_port={grpc_port}",
            *extra]


def vllm_command(*, model_dir: Path | str, served_model_name: str, port: int,
                 extra: Sequence[str] = ()) -> list[str]:
    """Plain vLLM's OpenAI server on loopback (health: ``/health``). ``python -m``, because
    the ``vllm`` console script fails with vllm-cpu (docs/platform-notes.md)."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
            str(model_dir), "--served-model-name", served_model_name, "--host", "127.0.0.1",
            "--port", str(port), *extra]


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
    """A command started in its own session, logging to a file, stoppable as a whole.

    ``log_path`` None: a new temporary file (named after ``name``) when the process starts.
    ``append_log``: keep what an earlier run wrote to the same file (else it is truncated).
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None,
                 log_path: Path | str | None = None, cwd: Path | str | None = None, *,
                 name: str = "process", append_log: bool = True) -> None:
        self.argv = list(argv)
        self.env = env if env is not None else dict(os.environ)
        self.log_path = Path(log_path) if log_path is not None else None
        self.cwd = cwd
        self.name = name
        self.append_log = append_log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        if self.log_path is None:
            fd, path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab" if self.append_log else "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=self.cwd, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def exit_code(self) -> int | None:
        """None while running (or not started), else the exit code."""
        return None if self.proc is None else self.proc.poll()

    def log(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of the log, preceded by its first error line (the root cause is
        usually far above a long traceback, e.g. in vLLM's engine process)."""
        log = self.log().splitlines()
        first = next((ln for ln in log if re.search(r"\b\w*(Error|Exception)\b:", ln)), None)
        tail = log[-lines:]
        if first and first not in tail:
            tail = [f"first error: {first}", "...", *tail]
        return "\n".join(tail)

    def dump_log(self, tail: int = 200) -> None:
        """Print the log's tail to stderr (for a process that failed)."""
        print(f"----- {self.name} log ({self.log_path}) -----", file=sys.stderr)
        print(self.log_tail(tail), file=sys.stderr, flush=True)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the session, SIGKILL what is left after ``timeout`` seconds; the exit code."""
        if self.proc is None:
            return None
        sid = self.proc.pid  # session leader: sid == pid
        if self.proc.poll() is None:
            _signal_session(sid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 5
        while session_members(sid) and time.monotonic() < deadline:
            _signal_session(sid, signal.SIGKILL)  # stragglers: engine core, workers
            time.sleep(0.2)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return self.proc.returncode


class ServerProcess(ChildProcess):
    """A server subprocess on ``port``, polled until ``health_path`` answers 200.

    ``start()`` launches it (environment ``engine_env()`` unless ``env`` is given, log in a
    temporary file unless ``log_path`` is given) and polls ``http://127.0.0.1:{port}`` +
    ``health_path`` every ``poll_interval`` s until it answers 200 (``ready_s`` is the time
    that took; ``statuses_before_ready`` counts the other statuses it answered meanwhile), the
    process exits (RuntimeError) or ``startup_timeout`` passes (TimeoutError);
    on failure the log's tail goes to stderr and the process is stopped. ``stop()`` sends
    SIGTERM to its session (process group and any process that left it), then SIGKILL.
    ``grpc_port`` is carried for callers that gave the server one.
    """

    def __init__(self, args: Sequence[str], *, port: int,
                 health_path: str = "/v2/health/ready", env: dict[str, str] | None = None,
                 startup_timeout: float = 600.0, name: str = "server",
                 cwd: Path | str | None = None, log_path: Path | str | None = None,
                 poll_interval: float = 0.5, grpc_port: int | None = None,
                 tls_ca: Path | str | None = None) -> None:
        super().__init__(args, env if env is not None else engine_env(), log_path, cwd,
                         name=name, append_log=False)
        self.port = port
        self.health_path = health_path
        self.startup_timeout = startup_timeout
        self.poll_interval = poll_interval
        self.grpc_port = grpc_port
        self.tls_ca = tls_ca  # HTTPS, verified against this certificate (None: plain HTTP)
        self.ready_s: float | None = None
        self.statuses_before_ready: Counter[int] = Counter()

    @property
    def args(self) -> list[str]:
        return self.argv

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> Self:
        super().start()
        try:
            self.wait_ready()
        except BaseException:  # failed, timed out, or interrupted (Ctrl-C, SIGTERM): clean up
            self.stop()
            raise
        return self

    def wait_ready(self) -> float:
        """Poll the health URL until it answers 200; the seconds since the process started."""
        assert self.proc is not None, "not started"
        t0 = time.monotonic()
        deadline = t0 + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.dump_log()
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} during "
                                   f"start-up; log: {self.log_path}")
            try:
                verify = str(self.tls_ca) if self.tls_ca else True
                status = httpx.get(self.url + self.health_path, timeout=2,
                                   verify=verify).status_code
                if status == 200:
                    self.ready_s = time.monotonic() - t0
                    return self.ready_s
                self.statuses_before_ready[status] += 1
            except httpx.HTTPError:
                pass
            time.sleep(self.poll_interval)
        self.dump_log()
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {self.startup_timeout} s; "
                           f"log: {self.log_path}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_session(sid: int, sig: int) -> None:
    """``sig`` once to every process of session ``sid``: its process group at once, then each
    member that left the group. Once, because a second SIGTERM means "stop at once, skip the
    drain" to the runtime."""
    try:
        os.killpg(sid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in session_members(sid):
        try:
            if os.getpgid(pid) != sid:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
