"""``python -m benchmarks frontend-cpu``'s accounting on stand-ins (fast tier, no engine).

The number the command reports is CPU seconds of the server's own process over a load,
divided by the tokens the responses' usage reports. These tests run Python processes that
burn known CPU: a process whose waited-for child burned more (psutil keeps that child's time
in the parent's ``children_*`` fields, which must not be counted); and stand-in servers that
burn a scripted CPU time per streamed token while a child of theirs spins (as vLLM's engine
core does), so the reported milliseconds per 1000 tokens must come out at the script's
figure, the child excluded, and the ratios at the ratio of the two scripts. Whether the
runtime costs more than plain vLLM is a measurement (docs/benchmarks.md), not a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import benchmarks.__main__ as bench_main
from benchmarks import frontend_cpu
from benchmarks.frontend_cpu import front_cpu_s, listening_pid, markdown, ms_per_1k, summarize
from deployment.processes import ServerProcess, free_port
from tests.support.server import DEFAULT_MODEL_DIR, REPO

BURNER = textwrap.dedent("""
    import subprocess, sys, time

    def burn(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    burn(float(sys.argv[1]))
    child = "import time\\nend = time.process_time() + %s\\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", child % sys.argv[2]], check=True)  # waited for
    print("done", flush=True)
    sys.stdin.readline()
""")

# test_side_by_side's scripted server (OpenAI and generate_stream like the runtime, or OpenAI
# only like plain vLLM, usage included), paced by CPU instead of sleeps: before each token it
# burns its own CPU for the pause; a child of its own spins meanwhile, as vLLM's engine core.
STANDIN = textwrap.dedent("""
    import subprocess, sys, time, types
    from aiohttp import web
    import tests.benchmarks.test_side_by_side as scripted

    port, burn_ms, v2 = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "v2"
    spin = ("import os, time\\nparent = os.getppid()\\nwhile os.getppid() == parent:\\n"
            "    t = time.monotonic()\\n    while time.monotonic() - t < 0.02: pass\\n"
            "    time.sleep(0.01)\\n")
    child = subprocess.Popen([sys.executable, "-c", spin])
    print("(EngineCore pid=%d) INFO Initializing a V1 LLM engine (v0.32.0) with config: "
          "model='/m', dtype=torch.float32, enforce_eager=True" % child.pid, flush=True)

    async def burn(seconds):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    scripted.asyncio = types.SimpleNamespace(sleep=burn)  # its pauses: first token, then each
    scripted.TTFT_S = scripted.GAP_S = burn_ms / 1000
    web.run_app(scripted.scripted_app([], v2), host="127.0.0.1", port=port, print=None)
""")

RUNTIME_MS, VLLM_MS = 10.0, 5.0  # the stand-ins' CPU per token
APIS = "openai-chat,openai-completions,v2-generate-stream"
REQUESTS, OUT_TOKENS, REPEATS = 4, 8, 2


def standin(name: str, burn_ms: float, log_dir: Path) -> ServerProcess:
    port = free_port()
    return ServerProcess([sys.executable, "-c", STANDIN, str(port), str(burn_ms),
                          "v2" if name == "runtime" else "openai"],
                         port=port, health_path="/health", name=name, cwd=REPO,
                         log_path=log_dir / f"{name}.log", startup_timeout=60,
                         poll_interval=0.1)


def test_front_cpu_is_the_process_own_time_not_its_waited_children() -> None:
    proc = subprocess.Popen([sys.executable, "-c", BURNER, "0.3", "0.6"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
        times = psutil.Process(proc.pid).cpu_times()
        assert times.children_user + times.children_system >= 0.55  # the trap is there
        assert 0.3 <= front_cpu_s(proc.pid) < 0.3 + 0.35  # burn + interpreter start-up
    finally:
        proc.kill()
        proc.wait()


def test_ms_per_1k_and_the_issue_ratios() -> None:
    """Per-repeat rows pool as total CPU / total tokens; every row is divided by plain
    vLLM's completions and chat rows (issue 22's figures give its ratios back)."""
    assert ms_per_1k(0.304, 1000) == pytest.approx(304)
    assert ms_per_1k(1.0, 0) is None
    measured = {("runtime", "openai-chat"): 304, ("runtime", "openai-completions"): 288,
                ("runtime", "v2-generate-stream"): 326, ("runtime", "v2-grpc-stream"): 435,
                ("vllm", "openai-chat"): 295, ("vllm", "openai-completions"): 282}
    points = []
    for (server, api), ms in measured.items():  # two repeats: 3072 tokens each, +-2 %
        for repeat, (tokens, scale) in enumerate(((3072, 0.98), (3072, 1.02))):
            cpu = ms * scale * tokens / 1e6
            points.append({"server": server, "api": api, "repeat": repeat, "requests": 48,
                           "failed": 0, "tokens": tokens, "cpu_s": cpu,
                           "ms_per_1k_tokens": ms_per_1k(cpu, tokens),
                           "token_sources": ["usage"]})
    rows = {(r["server"], r["api"]): r for r in summarize(points)}
    for key, ms in measured.items():
        assert rows[key]["ms_per_1k_tokens"] == pytest.approx(ms)
        assert rows[key]["tokens"] == 6144 and rows[key]["requests"] == 96
        assert rows[key]["per_repeat_ms"] == pytest.approx([ms * 0.98, ms * 1.02])
    ratio = {api: (round(rows[("runtime", api)]["vs_vllm_completions"], 2),
                   round(rows[("runtime", api)]["vs_vllm_chat"], 2))
             for api in ("openai-chat", "openai-completions", "v2-generate-stream",
                         "v2-grpc-stream")}
    assert ratio == {"openai-chat": (1.08, 1.03), "openai-completions": (1.02, 0.98),
                     "v2-generate-stream": (1.16, 1.11), "v2-grpc-stream": (1.54, 1.47)}
    assert rows[("vllm", "openai-completions")]["vs_vllm_completions"] == 1.0
    # Without plain vLLM there is nothing to divide by.
    alone = summarize([p for p in points if p["server"] == "runtime"])
    assert all(r["vs_vllm_completions"] is None and r["vs_vllm_chat"] is None for r in alone)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The command against two stand-ins it starts itself, one after the other."""
    out = tmp_path_factory.mktemp("frontend-cpu")
    started: list[ServerProcess] = []
    children_cpu: dict[str, float] = {}

    def factory(name: str, burn_ms: float) -> Any:
        def make(model_dir: str, served: str, engine_args: list[str], *rest: Any
                 ) -> ServerProcess:
            assert engine_args == ["--dtype=float32", "--enforce-eager"]
            for s in started:  # never two servers at once: the one before is stopped
                assert s.exit_code() is not None, f"{s.name} still running"
            server = standin(name, burn_ms, next(a for a in rest if isinstance(a, Path)))
            stop = server.stop

            def stop_after_reading_children(timeout: float = 20.0) -> int | None:
                children = psutil.Process(server.pid).children()
                children_cpu[name] = sum(sum(c.cpu_times()[:2]) for c in children)
                return stop(timeout)

            server.stop = stop_after_reading_children  # type: ignore[method-assign]
            started.append(server)
            return server
        return make

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(frontend_cpu, "runtime_server", factory("runtime", RUNTIME_MS))
        mp.setattr(frontend_cpu, "vllm_server", factory("vllm", VLLM_MS))
        mp.setattr(bench_main, "stop_on_sigterm", lambda: None)
        code = bench_main.main([
            "frontend-cpu", "--model-dir", str(DEFAULT_MODEL_DIR), "--api", APIS,
            "--requests", str(REQUESTS), "--concurrency", "2", "--repeats", str(REPEATS),
            "--input-len", "16", "--output-len", str(OUT_TOKENS), "--warmup", "2",
            "--cooldown", "0.3", "--out", str(out), "--name", "fc", "--logs",
            str(out / "logs"), "--", "--dtype=float32", "--enforce-eager"])
    yield {"code": code, "out": out, "started": started, "children_cpu": children_cpu,
           "doc": json.loads((out / "fc.json").read_text())}


@pytest.mark.slow  # the command end to end in subprocesses, with scripted servers
def test_each_server_alone_both_stopped_report_written(run: dict[str, Any]) -> None:
    assert run["code"] == 0
    assert [s.name for s in run["started"]] == ["runtime", "vllm"]
    assert all(s.exit_code() is not None for s in run["started"])
    doc = run["doc"]
    assert doc["settings_differences"] == []
    assert {n: s["pid"] for n, s in doc["servers"].items()} == {
        s.name: s.pid for s in run["started"]}
    sent = sorted((p["server"], p["api"], p["repeat"]) for p in doc["points"])
    assert sent == sorted([("runtime", a, r) for a in APIS.split(",") for r in range(REPEATS)]
                          + [("vllm", a, r) for a in ("openai-chat", "openai-completions")
                             for r in range(REPEATS)])
    for p in doc["points"]:
        assert (p["requests"], p["failed"]) == (REQUESTS, 0)
        assert p["tokens"] == REQUESTS * OUT_TOKENS and p["token_sources"] == ["usage"]
    text = (run["out"] / "fc.md").read_text()
    assert text == markdown(doc)
    assert "| runtime | generate_stream (v2 REST) | 8/0 | 64 |" in text


@pytest.mark.slow  # the command end to end in subprocesses, with scripted servers
def test_reported_cpu_is_the_script_child_excluded(run: dict[str, Any]) -> None:
    """Each stand-in burned its scripted CPU per token (plus a little HTTP; the kernel counts
    CPU time in 10 ms ticks, so a load's figure may be a tick short); its spinning child
    burned about as much over the run and is not in the figure."""
    rows = {(r["server"], r["api"]): r for r in run["doc"]["summary"]}
    for (server, _), row in rows.items():
        ms = RUNTIME_MS if server == "runtime" else VLLM_MS
        assert ms * 1000 * 0.95 <= row["ms_per_1k_tokens"] < ms * 1000 * 1.25, row
        assert row["cpu_s"] == pytest.approx(sum(
            p["cpu_s"] for p in run["doc"]["points"]
            if (p["server"], p["api"]) == (row["server"], row["api"])))
    for name, cpu in run["children_cpu"].items():
        measured = sum(r["cpu_s"] for r in rows.values() if r["server"] == name)
        # it spun throughout (two thirds of a core when it can): counted, it would have
        # pushed the figure far past the script's
        assert cpu > 0.5 * measured, (name, cpu, measured)
    for api in APIS.split(","):  # 10 ms / 5 ms, give or take a tick on ~0.3 s loads
        assert 1.7 < rows[("runtime", api)]["vs_vllm_completions"] < 2.2
        assert 1.7 < rows[("runtime", api)]["vs_vllm_chat"] < 2.2


@pytest.mark.slow  # the command end to end in subprocesses, with scripted servers
def test_running_server_found_by_its_port_no_vllm(tmp_path: Path) -> None:
    """``--url`` without ``--pid``: the listener of the URL's port is measured; ``--no-vllm``
    starts nothing and reports no ratio."""
    with standin("runtime", 2.0, tmp_path) as server:
        assert listening_pid(server.url) == server.pid
        code = bench_main.main([
            "frontend-cpu", "--model-dir", str(DEFAULT_MODEL_DIR), "--url", server.url,
            "--no-vllm", "--api", "openai-completions", "--requests", "2", "--repeats", "1",
            "--input-len", "16", "--output-len", "4", "--warmup", "0", "--cooldown", "0",
            "--out", str(tmp_path), "--name", "one"])
    assert code == 0
    doc = json.loads((tmp_path / "one.json").read_text())
    assert doc["servers"] == {"runtime": {"url": server.url, "grpc_url": None,
                                          "pid": server.pid, "started_by_benchmark": False}}
    assert doc["engine_args"] is None
    [row] = doc["summary"]
    assert row["tokens"] == 8 and row["vs_vllm_completions"] is None
    assert "| runtime | OpenAI completions (stream) | 2/0 | 8 |" in (tmp_path / "one.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--api", "v2-infer"], "choose from"),
    (["--url", "http://127.0.0.1:1", "--api", "v2-grpc-stream"], "needs --grpc-url"),
    (["--url", "http://127.0.0.1:1", "--grpc-url", "127.0.0.1:2", "--no-vllm", "--",
      "--dtype=float32"],
     "already running"),
    (["--requests", "0"], "at least 1"),
])
def test_refuses_what_it_cannot_do(argv: list[str], message: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Before any tokenizer, prompt or server."""
    monkeypatch.setattr(bench_main, "stop_on_sigterm", lambda: None)
    monkeypatch.setattr(frontend_cpu, "load_tokenizer", lambda _: pytest.fail("went on"))
    with pytest.raises(SystemExit, match=message):
        bench_main.main(["frontend-cpu", "--out", str(tmp_path), *argv])
