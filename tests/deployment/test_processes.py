"""``deployment.processes``: free ports, servers polled until healthy, clean stops.

Why: every suite, the benchmark tool, the local runner and the soak script start their servers
with this one helper, so its promises are checked here on a stand-in server (Python's
http.server, up in a fraction of a second; no engine): ready only once the health URL answers,
the log shown when start-up fails, one SIGTERM (a second one means "skip the drain" to the
runtime), then nothing of the session left, including a child that left the process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.servers import runtime_server, server_info, vllm_server
from deployment import processes
from deployment.processes import (
    ChildProcess,
    ServerProcess,
    engine_env,
    free_port,
    session_members,
)
from tests.support import server as support

# Serves the working folder on argv[1] after argv[2] seconds; starts a child that leaves the
# process group (as Ray's workers do); on SIGTERM logs it and exits half a second later.
STAND_IN = textwrap.dedent("""
    import http.server, os, signal, subprocess, sys, threading, time
    child = subprocess.Popen(["sleep", "300"], process_group=0)
    print(f"child {child.pid}", flush=True)
    terms = []
    def on_term(*_):
        terms.append(1)
        print(f"SIGTERM {len(terms)}", flush=True)
        threading.Timer(0.5, lambda: os._exit(0)).start()
    signal.signal(signal.SIGTERM, on_term)
    time.sleep(float(sys.argv[2]))
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])),
                                     http.server.SimpleHTTPRequestHandler).serve_forever()
""")


def stand_in(tmp_path: Path, delay: float = 0.0, **kwargs: object) -> ServerProcess:
    port = free_port()
    return ServerProcess([sys.executable, "-c", STAND_IN, str(port), str(delay)], port=port,
                         health_path="/", cwd=tmp_path, name="stand-in",
                         poll_interval=0.1, **kwargs)  # type: ignore[arg-type]


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_ready_only_when_healthy_then_stopped_as_a_whole(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    server = stand_in(tmp_path, delay=1.0, log_path=tmp_path / "logs" / "s.log")
    with server:
        assert server.ready_s is not None and server.ready_s >= 1.0
        assert httpx.get(server.url + "/").status_code == 200
        sid = server.pid
        assert len(session_members(sid)) == 2  # the server and its child in another group
        child = int(server.log().split("child ", 1)[1].split()[0])
        sent: list[tuple[str, int, int]] = []
        real_kill, real_killpg = os.kill, os.killpg

        def kill(pid: int, sig: int) -> None:
            sent.append(("kill", pid, sig))
            real_kill(pid, sig)

        def killpg(pgid: int, sig: int) -> None:
            sent.append(("killpg", pgid, sig))
            real_killpg(pgid, sig)

        monkeypatch.setattr(processes.os, "kill", kill)
        monkeypatch.setattr(processes.os, "killpg", killpg)
    monkeypatch.undo()
    assert server.exit_code() == 0
    assert session_members(sid) == [], "a process of the session was left running"
    # one SIGTERM each: the group at once, the child that left it on its own
    assert sent[:2] == [("killpg", sid, signal.SIGTERM), ("kill", child, signal.SIGTERM)], sent
    assert ("kill", sid, signal.SIGTERM) not in sent, sent
    log = (tmp_path / "logs" / "s.log").read_text()
    assert "SIGTERM 1" in log and "SIGTERM 2" not in log, log


def test_exit_during_start_up_shows_the_log(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    server = ServerProcess([sys.executable, "-c", "print('boom: no such model'); exit(3)"],
                           port=free_port(), name="doomed", cwd=tmp_path)
    with pytest.raises(RuntimeError, match="doomed exited with 3 during start-up"):
        server.start()
    assert "boom: no such model" in capsys.readouterr().err
    assert server.log_path is not None and server.log_path.name.startswith("doomed-")


def test_never_healthy_times_out_and_is_stopped(tmp_path: Path) -> None:
    server = stand_in(tmp_path, delay=60.0, startup_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="stand-in not ready after 1.0 s"):
        server.start()
    assert time.monotonic() - t0 < 15
    assert server.exit_code() is not None and session_members(server.pid) == []


# A tool that starts a server, says its pid, then works "forever" (until a signal).
TOOL = textwrap.dedent("""
    import sys, time
    from deployment.processes import ServerProcess, free_port, stop_on_sigterm
    stop_on_sigterm()
    port = free_port()
    server = ServerProcess([sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)],
                           port=port, health_path="/", poll_interval=0.1)
    with server:
        print(server.pid, flush=True)
        time.sleep(300)
""")


def test_a_tool_that_times_out_still_stops_its_servers(tmp_path: Path) -> None:
    """``run_tool``'s SIGTERM reaches the tool, whose ``finally`` stops its server (a server
    has a session of its own: killing the tool alone would leave it running)."""
    with pytest.raises(subprocess.TimeoutExpired) as failed:
        support.run_tool([sys.executable, "-c", TOOL], timeout=10, grace=30)
    assert failed.value.output, f"the tool's server did not start: {failed.value.stderr!r}"
    server_pid = int(failed.value.output.split()[0])
    assert session_members(server_pid) == [], "the tool's server was left running"


def test_child_process_log_tail_names_the_first_error(tmp_path: Path) -> None:
    script = "print('ValueError: the root cause'); [print(i) for i in range(100)]"
    child = ChildProcess([sys.executable, "-c", script], log_path=tmp_path / "c.log").start()
    child.proc.wait(timeout=30)  # type: ignore[union-attr]
    tail = child.log_tail(5).splitlines()
    assert tail[0] == "first error: ValueError: the root cause" and tail[-1] == "99"
    assert child.stop() == 0


def test_engine_env_keeps_what_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "5")
    env = engine_env({"EXTRA": "1"})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "5" and env["HF_HUB_OFFLINE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1" and env["EXTRA"] == "1"


def test_users_build_on_the_one_helper(tmp_path: Path) -> None:
    """The benchmark servers and the test suites' servers are this ServerProcess."""
    rt = runtime_server("/m", "smollm2", ["--max-model-len=2048"], 1234, 1235, tmp_path)
    assert isinstance(rt, ServerProcess) and rt.grpc_port == 1235
    assert rt.argv[1:] == ["-m", "runtime", "--model_name=smollm2", "--model_dir=/m",
                           "--http_port=1234", "--grpc_port=1235", "--max-model-len=2048"]
    vllm = vllm_server("/m", "smollm2", [], 1236, tmp_path)
    assert vllm.health_path == "/health" and vllm.log_path == tmp_path / "vllm.log"
    assert server_info(vllm)["engine_settings"] is None  # not started: no log yet
    assert issubclass(support.ServerProcess, ServerProcess)
    assert support.ServerProcess([], port=1).cwd == support.REPO
    assert support.free_port is free_port and support.engine_env is engine_env
