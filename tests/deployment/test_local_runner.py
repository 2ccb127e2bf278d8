"""Each example InferenceService through the local runner, against the real SmolLM2 model.

The runner starts the containers' own commands (the real ``python -m runtime`` and
``python -m explainers``) with the manifests' arguments and environment, then every probe must
answer on its path and port; then an OpenAI chat through the predictor must answer "Paris" and
the explainer must explain. One set of processes per example serves all its assertions.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from deployment.local import LocalDeployment, StartupError
from deployment.manifests import Manifest, find_isvc, load_manifests, plan
from tests.deployment.conftest import REPO, RUNTIMES_DIR, example, runtimes

# The test machine has little memory to spare: a small KV cache for every predictor.
LOCAL_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
FACTS = "Alice lives in Paris. Bob lives in Rome. Where does Bob live?"


def _start(isvc: Manifest, components: tuple[str, ...]) -> LocalDeployment:
    # The runner's own temp folder, not pytest's: concurrent pytest sessions on this machine
    # prune each other's old basetemp folders, and these processes write there for minutes.
    dep = LocalDeployment(plan(isvc, runtimes(), components), model_dir=_model_dir(),
                          extra_env=LOCAL_ENV)
    try:
        return dep.start()
    except BaseException:
        dep.stop()
        raise


def _model_dir() -> str:
    from tests.support.server import DEFAULT_MODEL_DIR

    return str(DEFAULT_MODEL_DIR)


def assert_all_probes_passed(dep: LocalDeployment) -> None:
    for c in dep.containers:
        kinds = {r.kind for r in c.results if r.ok}
        assert kinds == {"startupProbe", "readinessProbe", "livenessProbe"}, (c.name, c.results)


def assert_chat_answers_paris(url: str, model: str) -> None:
    client = openai.OpenAI(base_url=f"{url}/openai/v1", api_key="unused", timeout=120)
    out = client.chat.completions.create(
        model=model, max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in out.choices[0].message.content, out


def assert_explains(url: str, model: str) -> None:
    body = {"messages": [{"role": "user", "content": FACTS}], "response": "Bob lives in Rome.",
            "granularity": "sentence", "method": "leave_one_out", "html": False}
    r = httpx.post(f"{url}/v1/models/{model}:explain", json=body, timeout=600)
    assert r.status_code == 200, r.text
    [e] = r.json()["explanations"]
    attr = dict(zip([f["text"] for f in e["input_features"]], e["seq_attr"], strict=True))
    assert attr["Bob lives in Rome."] > attr["Alice lives in Paris."], attr


def _stop(dep: LocalDeployment) -> None:
    dep.stop()
    shutil.rmtree(dep.workdir, ignore_errors=True)


@pytest.fixture(scope="class")
def standard_cpu() -> Iterator[LocalDeployment]:
    dep = _start(example("smollm2-standard-cpu"), ("predictor", "explainer"))
    yield dep
    _stop(dep)


@pytest.fixture(scope="class")
def knative_cpu() -> Iterator[LocalDeployment]:
    dep = _start(example("smollm2-knative-cpu"), ("predictor", "explainer"))
    yield dep
    _stop(dep)


@pytest.mark.slow
class TestStandardCpu:
    def test_every_probe_answers_on_its_path_and_port(self, standard_cpu) -> None:
        assert_all_probes_passed(standard_cpu)
        [pred, _] = standard_cpu.containers
        # the manifest's paths reached the runtime: /mnt/models and the /tmp emptyDir
        assert f"--model_dir={_model_dir()}" in pred.argv
        assert pred.env["HOME"].startswith(str(standard_cpu.workdir))
        # the gRPC port (h2c) is listened on too
        assert pred.port_map[8081] and httpx.get(
            f"http://127.0.0.1:{pred.port_map[8080]}/metrics").status_code == 200

    def test_openai_chat_answers_paris(self, standard_cpu) -> None:
        assert_chat_answers_paris(standard_cpu.component_url("predictor"), "smollm2")

    def test_keda_query_names_series_the_runtime_exports(self, standard_cpu) -> None:
        """The autoscaling query would find the metrics: same names, same model_name label."""
        [metric] = example("smollm2-standard-cpu").doc["spec"]["predictor"]["autoScaling"][
            "metrics"]
        selectors = re.findall(r"(vllm:\w+)\{([^}]*)\}", metric["external"]["metric"]["query"])
        # README: "KEDA autoscaling on running + waiting requests"
        assert sorted(n for n, _ in selectors) == ["vllm:num_requests_running",
                                                   "vllm:num_requests_waiting"], selectors
        text = httpx.get(standard_cpu.component_url("predictor") + "/metrics").text
        for name, labels in selectors:
            wanted = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            series = [dict(re.findall(r'(\w+)="([^"]*)"', m))
                      for m in re.findall(rf"^{re.escape(name)}\{{([^}}]*)\}}", text, re.M)]
            assert any(wanted.items() <= s.items() for s in series), (name, wanted, series)

    def test_explainer_explains_through_the_predictor(self, standard_cpu) -> None:
        [_, expl] = standard_cpu.containers
        assert expl.argv[expl.argv.index("--predictor_host") + 1] == \
            standard_cpu.component_url("predictor").removeprefix("http://")
        assert_explains(standard_cpu.component_url("explainer"), "smollm2")


@pytest.mark.slow
class TestKnativeCpu:
    def test_every_probe_answers_on_its_path_and_port(self, knative_cpu) -> None:
        assert_all_probes_passed(knative_cpu)
        assert [c.name for c in knative_cpu.containers] == ["smollm2-knative-predictor",
                                                            "smollm2-knative-explainer"]

    def test_openai_chat_answers_paris(self, knative_cpu) -> None:
        assert_chat_answers_paris(knative_cpu.component_url("predictor"), "smollm2-knative")

    def test_explainer_explains_through_the_predictor(self, knative_cpu) -> None:
        assert_explains(knative_cpu.component_url("explainer"), "smollm2-knative")


@pytest.mark.slow
def test_gpu_example_runs_its_command_and_probes_on_this_cpu() -> None:
    """The GPU runtime's command, arguments and probes, run by the CPU build of vLLM."""
    dep = _start(example("qwen-standard-gpu"), ("predictor",))
    try:
        assert_all_probes_passed(dep)
        assert "--gpu-memory-utilization=0.90" in dep.containers[0].argv
        assert_chat_answers_paris(dep.component_url("predictor"), "qwen")
    finally:
        _stop(dep)


def _fake_runtime(tmp_path: Path, probe_path: str) -> tuple[Path, Path]:
    """A ServingRuntime whose container is Python's http.server (a directory listing), and an
    InferenceService that selects it: start-up takes a second, no engine involved."""
    rt = yaml.safe_load((RUNTIMES_DIR / "kserve-vllm-cpu.yaml").read_text())
    rt["metadata"]["name"] = "fake"
    c = rt["spec"]["containers"][0]
    # the port comes from a *_PORT variable, which the runner maps like any declared port
    c.update(command=["python", "-c", "import http.server as h, os; h.ThreadingHTTPServer(("
                      "'127.0.0.1', int(os.environ['HTTP_PORT'])), h.SimpleHTTPRequestHandler)"
                      ".serve_forever()"], args=[], env=[{"name": "HTTP_PORT", "value": "8080"}])
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        c[kind] = {"httpGet": {"path": probe_path, "port": 8080}, "periodSeconds": 1,
                   "failureThreshold": 5}
    isvc = copy.deepcopy(example("smollm2-standard-cpu").doc)
    isvc["spec"]["predictor"]["model"].update(runtime="fake", args=[])
    del isvc["spec"]["explainer"]
    (tmp_path / "rt.yaml").write_text(yaml.safe_dump(rt))
    (tmp_path / "isvc.yaml").write_text(yaml.safe_dump(isvc))
    return tmp_path / "isvc.yaml", tmp_path / "rt.yaml"


def test_runner_fails_when_a_probe_path_answers_404(tmp_path: Path) -> None:
    isvc_file, rt_file = _fake_runtime(tmp_path, "/v2/health/ready")
    manifests = load_manifests([isvc_file, rt_file])
    dep = LocalDeployment(plan(find_isvc(manifests), manifests, ("predictor",)),
                          model_dir=tmp_path, workdir=tmp_path / "run")
    with pytest.raises(StartupError, match="startupProbe did not pass within its budget"):
        dep.start()
    dep.stop()
    assert dep.containers[0].process.exit_code() is not None


def test_cli_run_check_passes_when_probes_answer(tmp_path: Path) -> None:
    isvc_file, rt_file = _fake_runtime(tmp_path, "/")
    done = subprocess.run(
        [sys.executable, "-m", "deployment", "run", "--isvc", str(isvc_file), "--runtime",
         str(rt_file), "--model-dir", str(tmp_path), "--check", "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok   readinessProbe  GET :8080/" in done.stdout
    assert "all probes passed" in done.stdout


def test_cli_help_and_plan() -> None:
    done = subprocess.run([sys.executable, "-m", "deployment", "run", "--help"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0 and "--model-dir" in done.stdout and "/mnt/models" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "deployment", "plan", "--isvc",
         "servingruntimes/examples/smollm2-standard-cpu.yaml", "--runtime", "servingruntimes/"],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "--model_name=smollm2" in done.stdout and "/v2/health/ready" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "deployment", "plan", "--isvc",
         "servingruntimes/examples/smollm2-knative-cpu.yaml", "--runtime",
         "servingruntimes/kserve-vllm-cpu.yaml"],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2 and "runtime 'kserve-vllm-knative' not found" in done.stderr
