"""The multi-node bootstrap with a real local Ray head and worker on loopback.

The multi-node example InferenceService is planned as KServe would (head pod + worker pod, with
the injected RAY_NODE_COUNT / HEAD_SVC / parallel sizes) and its containers are run by the local
runner: the head must wait for the worker, then start the runtime, which must serve a request.
On this CPU-only machine the engine runs on the head with vLLM's multiprocessing executor (the
CPU build refuses Ray), so the test sets the engine's parallel sizes to 1 while keeping two
Ray nodes. A head whose worker never comes must fail with a clear error and a non-zero exit.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_head_waits_for_the_worker_then_serves(model_dir: str) -> None:
    isvc = example("qwen-multinode-gpu")
    isvc = copy.copy(isvc)
    isvc.doc = copy.deepcopy(isvc.doc)
    # the 72B example's context length does not fit SmolLM2
    isvc.doc["spec"]["predictor"]["model"]["args"] = ["--max-model-len=2048"]
    dep = LocalDeployment(
        plan(isvc, runtimes(), ("predictor",)), model_dir=model_dir,  # its own temp folder
        extra_env={**RAY_ENV, "TENSOR_PARALLEL_SIZE": "1", "PIPELINE_PARALLEL_SIZE": "1",
                   "VLLM_CPU_KVCACHE_SPACE": "1", "RAY_WAIT_TIMEOUT": "300"})
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
        dep.wait_started([head, worker], timeout=600)
        log = head.process.log_path.read_text()
        assert f"{nodes} of {nodes} Ray nodes joined" in log
        assert "--distributed-executor-backend=mp" in log  # no GPU: vLLM's CPU executor
        for c in (head, worker):
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                result = c.probe(kind)
                assert result.ok, (c.name, result)
        assert_chat_answers_paris(dep.component_url("predictor"), "qwen-72b")
    finally:
        dep.stop()
    shutil.rmtree(dep.workdir, ignore_errors=True)
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
