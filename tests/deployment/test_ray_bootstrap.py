"""The multi-node bootstrap with a real local Ray head and worker on loopback.

The multi-node example InferenceService is planned as KServe would (head pod + worker pod, with
the injected RAY_NODE_COUNT / HEAD_SVC / parallel sizes) and its containers are run by the local
runner: the head must wait for the worker, then start the runtime, which must serve a request.
On this CPU-only machine the engine runs on the head with vLLM's multiprocessing executor (the
CPU build refuses Ray), so the test sets the engine's parallel sizes to 1 while keeping two
Ray nodes; the runtime gets an API key on its command line, which neither the runner's output
nor the head's log may show. A head whose worker never comes must fail with a clear error and a
non-zero exit.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployment import ray_bootstrap
from deployment.local import LocalDeployment
from deployment.manifests import plan
from deployment.processes import free_port, session_members
from deployment.ray_bootstrap import head_address, runtime_command
from tests.deployment.conftest import REPO, example, runtimes
from tests.deployment.test_local_runner import assert_chat_answers_paris

# One CPU and a small object store per Ray node; the test machine is shared.
RAY_ENV = {"RAY_START_ARGS": "--num-cpus=1 --object-store-memory=100000000",
           "RAY_USAGE_STATS_ENABLED": "0"}


def _wait_for_log(path: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = path.read_text(errors="replace") if path.exists() else ""
        if text in log:
            return log
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s:\n{log[-3000:]}")


KEY = "ray-test-key"  # given to the runtime on its command line; never printed


@pytest.mark.slow
@pytest.mark.timeout(600)  # Ray nodes (<= 120 s), the engine on the head (<= 420 s), a chat
def test_head_waits_for_the_worker_then_serves(model_dir: str) -> None:
    isvc = example("qwen-multinode-gpu")
    isvc = copy.copy(isvc)
    isvc.doc = copy.deepcopy(isvc.doc)
    # the 72B example's context length does not fit SmolLM2; a key, which no output may show
    isvc.doc["spec"]["predictor"]["model"]["args"] = ["--max-model-len=2048", "--api_key", KEY]
    printed: list[str] = []
    plans = plan(isvc, runtimes(), ("predictor",))
    # the key on the command line instead of the runtime's key file (one source of the two)
    head_args = plans[0].container["args"]
    head_args[:] = [a for a in head_args if not a.startswith("--api_key_file=")]
    dep = LocalDeployment(
        plans, model_dir=model_dir,  # its own temp folder
        extra_env={**RAY_ENV, "TENSOR_PARALLEL_SIZE": "1", "PIPELINE_PARALLEL_SIZE": "1",
                   "VLLM_CPU_KVCACHE_SPACE": "1", "RAY_WAIT_TIMEOUT": "300"},
        echo=printed.append)
    # the example's node count (pipelineParallelSize): a head and one worker per further node
    nodes = int(isvc.doc["spec"]["predictor"]["workerSpec"]["pipelineParallelSize"])
    assert len(dep.containers) == nodes == 2, "this test runs one head and one worker"
    head, worker = dep.containers
    assert head.env["RAY_NODE_COUNT"] == str(nodes) and worker.env["HEAD_SVC"] == "127.0.0.1"
    sessions = []
    try:
        dep.start_container(head)
        sessions.append(head.process.pid)
        log = _wait_for_log(head.process.log_path, f"waiting for Ray nodes: 1 of {nodes} joined", 120)
        assert "starting the runtime" not in log
        assert not head.probe("readinessProbe").ok  # nothing serves until the worker joined
        dep.start_container(worker)
        sessions.append(worker.process.pid)
        dep.wait_started([head, worker], timeout=420)
        log = head.process.log_path.read_text()
        assert f"{nodes} of {nodes} Ray nodes joined" in log
        assert "--distributed-executor-backend=mp" in log  # no GPU: vLLM's CPU executor
        for c in (head, worker):
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                result = c.probe(kind)
                assert result.ok, (c.name, result)
        assert_chat_answers_paris(dep.component_url("predictor"), "qwen-72b", api_key=KEY)
        # what the runner printed ([pod] argv) and what the head logged ("starting the
        # runtime: ...") show the key flag, never the key
        assert f"--api_key {KEY}" in " ".join(head.argv)
        assert any(line.startswith(f"[{head.name}] ") and "--api_key ***" in line
                   for line in printed), printed
        started = [ln for ln in log.splitlines() if "starting the runtime:" in ln]
        assert started and "--api_key ***" in started[0], started
        assert KEY not in "\n".join(printed) + log
    finally:
        dep.stop()  # and its work directory
    assert not dep.workdir.exists()
    assert all(session_members(sid) == [] for sid in sessions), "Ray processes left behind"


@pytest.mark.slow  # a real Ray head (GCS, raylet, dashboard agent)
def test_head_fails_clearly_when_a_worker_never_joins(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **RAY_ENV, "RAY_NODE_COUNT": "2", "RAY_PORT": str(port),
           "RAY_WAIT_TIMEOUT": "6", "POD_IP": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "deployment.ray_bootstrap", "head",
                             "--model_name=never"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        deadline = time.monotonic() + 15
        while session_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        leftover = session_members(proc.pid)
        for pid in leftover:
            os.kill(pid, 9)
    assert proc.returncode == 1, out
    assert "ERROR: only 1 of 2 Ray nodes joined within 6 s" in out, out
    assert "starting the runtime" not in out
    assert time.monotonic() - started < 120
    assert leftover == [], "the head left its Ray daemons running"


def test_worker_gives_up_when_the_head_never_answers() -> None:
    env = {**os.environ, "HEAD_SVC": "127.0.0.1", "RAY_PORT": str(free_port()),
           "RAY_WAIT_TIMEOUT": "3"}
    done = subprocess.run([sys.executable, "-m", "deployment.ray_bootstrap", "worker"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "did not answer within 3 s" in done.stdout


def test_head_never_prints_the_runtimes_key(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The head's real output up to the moment it becomes the runtime, with Ray stood in for
    (``ray start`` succeeds, the nodes have joined) and the final ``exec`` caught: every form
    of key the manifest's args may carry is given to the runtime and never printed."""
    started: list[list[str]] = []

    class Exec(Exception):
        pass

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        started.append(list(argv))
        raise Exec

    monkeypatch.setattr(ray_bootstrap.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0))
    monkeypatch.setattr(ray_bootstrap, "wait_for_nodes", lambda *a, **kw: 0.0)
    monkeypatch.setattr(ray_bootstrap.os, "execve", execve)
    monkeypatch.setenv("RAY_NODE_COUNT", "2")
    args = ["--model_name=m", "--api_key", "k-1", "--api-key=k-2", "--predictor_api_key", "k-3",
            "--predictor-api-key=k-4"]
    with pytest.raises(Exec):
        ray_bootstrap.main(["head", *args])
    out = capsys.readouterr().out
    [line] = [ln for ln in out.splitlines() if "starting the runtime:" in ln]
    assert line.startswith("ray_bootstrap: starting the runtime: ") and " -m runtime " in line
    assert ("--model_name=m --api_key *** --api-key=*** --predictor_api_key *** "
            "--predictor-api-key=***") in line, line
    assert not [k for k in ("k-1", "k-2", "k-3", "k-4") if k in out], out
    [argv] = started
    assert argv[3:3 + len(args)] == args  # the runtime itself gets the keys


def test_head_address_and_runtime_command() -> None:
    assert head_address({"HEAD_SVC": "llm-predictor-head", "POD_NAMESPACE": "ns"}) == \
        "llm-predictor-head.ns.svc.cluster.local:6379"
    assert head_address({"HEAD_SVC": "10.0.0.7", "RAY_PORT": "7000"}) == "10.0.0.7:7000"
    cmd = runtime_command(["--model_name=m", "--tensor-parallel-size=8"], tp=4, pp=2,
                          backend="ray")
    assert cmd[1:] == ["-m", "runtime", "--model_name=m", "--tensor-parallel-size=8",
                       "--pipeline-parallel-size=2", "--distributed-executor-backend=ray"]
    with pytest.raises(SystemExit, match="HEAD_SVC is not set"):
        head_address({})
