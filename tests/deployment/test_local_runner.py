"""Each example InferenceService through the local runner, against the real SmolLM2 model.

One real start (the Standard CPU example, predictor and explainer): the runner starts the
containers' own commands (the real ``python -m runtime`` and ``python -m explainers``) with the
manifests' arguments and environment, every probe must answer on its path and port, an OpenAI
chat through the predictor must answer "Paris" and the explainer must explain; those processes
serve all its assertions. The other examples are proven against that run without an engine of
their own: the Knative example's plan is the Standard one's except for exactly the differences
its manifests state (one port, no pod securityContext, ...), and the GPU example runs the same
command and probes with arguments the runtime parses into the engine configuration it documents.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from deployment.local import LocalDeployment, StartupError
from deployment.manifests import (
    ContainerPlan,
    Manifest,
    ManifestError,
    find_isvc,
    load_manifests,
    plan,
)
from tests.deployment.conftest import (
    EXAMPLES_DIR,
    REPO,
    RUNTIMES_DIR,
    example,
    example_key,
    runtimes,
)

# The test machine has little memory to spare: a small KV cache for every predictor.
LOCAL_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
FACTS = "Alice lives in Paris. Bob lives in Rome. Where does Bob live?"


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
START_TIMEOUT = 420  # each component's start-up, not its manifest's 10-15 minute probe budget
# The class's real start (predictor, then explainer) and its tests, leave-one-out explanations
# the slowest (measured: docs/deployment.md).
REAL_START_TIMEOUT = 600


def _start(isvc: Manifest, components: tuple[str, ...]) -> LocalDeployment:
    # The runner's own temp folder, not pytest's: concurrent pytest sessions on this machine
    # prune each other's old basetemp folders, and these processes write there for minutes.
    # The runner removes it in stop().
    dep = LocalDeployment(plan(isvc, runtimes(), components), model_dir=_model_dir(),
                          extra_env=LOCAL_ENV)
    try:
        return dep.start(timeout=START_TIMEOUT)
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


def assert_chat_answers_paris(url: str, model: str, api_key: str = "unused") -> None:
    client = openai.OpenAI(base_url=f"{url}/openai/v1", api_key=api_key, timeout=120)
    out = client.chat.completions.create(
        model=model, max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in out.choices[0].message.content, out


def assert_explains(url: str, model: str, api_key: str) -> None:
    body = {"messages": [{"role": "user", "content": FACTS}], "response": "Bob lives in Rome.",
            "granularity": "sentence", "method": "leave_one_out", "html": False}
    refused = httpx.post(f"{url}/v1/models/{model}:explain", json=body, timeout=60)
    assert refused.status_code == 401, refused.text  # the explainer has its own key
    r = httpx.post(f"{url}/v1/models/{model}:explain", json=body, timeout=600,
                   headers={"Authorization": f"Bearer {api_key}"})
    assert r.status_code == 200, r.text
    [e] = r.json()["explanations"]
    attr = dict(zip([f["text"] for f in e["input_features"]], e["seq_attr"], strict=True))
    assert attr["Bob lives in Rome."] > attr["Alice lives in Paris."], attr


@pytest.fixture(scope="class")
def standard_cpu() -> Iterator[LocalDeployment]:
    dep = _start(example("smollm2-standard-cpu"), ("predictor", "explainer"))
    try:
        yield dep
    finally:
        dep.stop()  # and its work directory


@pytest.mark.slow
@pytest.mark.timeout(REAL_START_TIMEOUT)  # the first test pays for the class's start-up
class TestStandardCpu:
    def test_every_probe_answers_on_its_path_and_port(self, standard_cpu) -> None:
        assert_all_probes_passed(standard_cpu)
        [pred, _] = standard_cpu.containers
        # the manifest's paths reached the runtime: /mnt/models and the /scratch emptyDir
        assert f"--model_dir={_model_dir()}" in pred.argv
        assert pred.env["HOME"].startswith(str(standard_cpu.volumes_dir))
        assert pred.env["TMPDIR"].startswith(str(standard_cpu.volumes_dir))
        # the gRPC port (h2c) is listened on too
        assert pred.port_map[8081] and httpx.get(
            f"http://127.0.0.1:{pred.port_map[8080]}/metrics").status_code == 200

    def test_openai_chat_answers_paris_with_the_examples_key(self, standard_cpu) -> None:
        url = standard_cpu.component_url("predictor")
        key = example_key(EXAMPLES_DIR / "smollm2-standard-cpu.yaml")  # the runner's key file
        assert_chat_answers_paris(url, "smollm2", api_key=key)
        # the key is in force: without it 401, while health (the probes) and /metrics need none
        r = httpx.get(f"{url}/openai/v1/models", timeout=30)
        assert r.status_code == 401, r.text
        assert httpx.get(f"{url}/openai/v1/models", timeout=30,
                         headers={"Authorization": f"Bearer {key}"}).status_code == 200

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
        # the example's explainer asks for the same inference key as the predictor
        key = example_key(EXAMPLES_DIR / "smollm2-standard-cpu.yaml")
        assert_explains(standard_cpu.component_url("explainer"), "smollm2", key)


# ---- the other examples, against the Standard run: their plans, no engine of their own ----

def _renamed(value: Any, old: str, new: str) -> Any:
    """``value`` with ``old`` replaced by ``new`` in every string (the service's name)."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_renamed(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _renamed(v, old, new) for k, v in value.items()}
    return value


def _flat(value: Any, path: str = "") -> dict[str, Any]:
    """Leaves of a manifest by path; list items that have a ``name`` (ports, env, volumes)
    are keyed by it, other lists (``args``, ``command``) are leaves."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{path}/{key}").items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v
                                                 for v in value):
        return {k: v for item in value for k, v in _flat(item, f"{path}[{item['name']}]").items()}
    return {path: value}


def _plan_diff(a: ContainerPlan, b: ContainerPlan) -> dict[str, tuple[Any, Any]]:
    """Every leaf of the container and the pod that differs: path -> (a's, b's)."""
    out = {}
    for part in ("container", "pod"):
        fa, fb = _flat(getattr(a, part), part), _flat(getattr(b, part), part)
        out |= {k: (fa.get(k, "<absent>"), fb.get(k, "<absent>")) for k in fa.keys() | fb.keys()
                if fa.get(k, "<absent>") != fb.get(k, "<absent>")}
    return out


ABSENT = "<absent>"


def test_knative_example_plans_the_standard_run_but_what_its_manifests_change() -> None:
    """What TestStandardCpu runs for real, the Knative example runs too: with the service's name
    read as ``smollm2``, its predictor and explainer plans differ from the Standard ones in
    exactly what the manifests say, so its command, arguments, environment and probes are the
    ones proven by the Standard run."""
    standard = plan(example("smollm2-standard-cpu"), runtimes())
    knative = [dataclasses.replace(p, **{f: _renamed(getattr(p, f), "smollm2-knative", "smollm2")
                                         for f in ("pod_name", "container", "pod")})
               for p in plan(example("smollm2-knative-cpu"), runtimes())]
    assert [(p.component, p.pod_name) for p in knative] == \
        [(p.component, p.pod_name) for p in standard] == \
        [("predictor", "smollm2-predictor"), ("explainer", "smollm2-explainer")]
    pod_security = {k: (v, ABSENT) for k, v in
                    _flat(standard[0].pod["securityContext"], "pod/securityContext").items()}
    # kserve-vllm-knative.yaml: "Knative allows a single port per container (so the gRPC port
    # is not declared here)"; "No `privileged` key: Knative's webhook accepts only a subset";
    # smollm2-knative-cpu.yaml: "Knative accepts a pod-level [securityContext] only with the
    # kubernetes.podspec-securitycontext feature flag".
    knative_rules = {"container/securityContext/privileged": (False, ABSENT), **pod_security}
    std_args = standard[0].container["args"]
    assert _plan_diff(standard[0], knative[0]) == {
        "container/ports[h2c]/containerPort": (8081, ABSENT),
        "container/ports[h2c]/name": ("h2c", ABSENT),
        "container/ports[h2c]/protocol": ("TCP", ABSENT),
        # smollm2-standard-cpu.yaml drains for 110 s within a 120 s grace period; the Knative
        # example keeps the runtime's default drain (25 s) and Kubernetes' default grace (30 s)
        "container/args": (std_args, [a for a in std_args if a != "--drain_timeout=110"]),
        "pod/terminationGracePeriodSeconds": (120, ABSENT),
        **knative_rules}
    assert _plan_diff(standard[1], knative[1]) == knative_rules
    for std, kn in zip(standard, knative, strict=True):  # what the diff above implies
        assert kn.container["command"] == std.container["command"]
        assert {k: kn.container[k] for k in PROBES} == {k: std.container[k] for k in PROBES}
        assert kn.container["env"] == std.container["env"]
    # the runtime's gRPC listener still runs inside the pod (--grpc_port), just not routed:
    # the runner gives it a port as it does in the Standard run
    dep = LocalDeployment(plan(example("smollm2-knative-cpu"), runtimes(), ["predictor"]),
                          model_dir=_model_dir(), echo=lambda _: None)
    try:
        assert dep.containers[0].port_map.keys() == {8080, 8081}
    finally:
        dep.stop()


def test_gpu_example_is_the_cpu_command_with_engine_args_the_runtime_resolves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU runtime's command, ports and probes are the CPU runtime's (proven by the Standard
    run); its arguments, as the runner would start them here, are parsed by the runtime and
    resolved into the engine configuration the example documents, without starting an engine
    (as tests/runtime/test_engine_args.py does)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from runtime import cli
    from runtime.engine.vllm_args import parse_engine_args

    for var, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                       ("VLLM_CPU_KVCACHE_SPACE", "1"), ("VLLM_NO_USAGE_STATS", "1")):
        monkeypatch.setenv(var, value)
    [gpu] = plan(example("qwen-standard-gpu"), runtimes(), ["predictor"])
    [cpu] = plan(example("smollm2-standard-cpu"), runtimes(), ["predictor"])
    for key in ("command", "ports", *PROBES):
        assert gpu.container[key] == cpu.container[key], key
    dep = LocalDeployment([gpu], model_dir=_model_dir(), echo=lambda _: None)
    try:
        [c] = dep.containers
        assert c.argv[:3] == [sys.executable, "-m", "runtime"]
        settings = cli.parse(c.argv[3:])
        assert (settings.model_name, settings.model_dir) == ("qwen", _model_dir())
        assert (settings.http_port, settings.grpc_port) == (c.port_map[8080], c.port_map[8081])
        assert settings.drain_timeout == 110
        config = AsyncEngineArgs.from_cli_args(parse_engine_args(settings)).create_engine_config()
    finally:
        dep.stop()
    m = config.model_config
    assert (m.model, m.served_model_name, m.max_model_len) == (_model_dir(), "qwen", 8192)
    assert config.cache_config.gpu_memory_utilization == pytest.approx(0.90)
    assert config.parallel_config.tensor_parallel_size == 1  # one GPU, one rank
    # on this CPU, the runtime's CPU defaults; on a GPU vLLM's own (test_claims_manifests.py)
    assert (str(m.dtype), m.enforce_eager) == ("torch.float32", True)


SERVER = ("import http.server as h, os; h.ThreadingHTTPServer(('127.0.0.1', "
          "int(os.environ['HTTP_PORT'])), h.SimpleHTTPRequestHandler).serve_forever()")


def _fake_runtime(tmp_path: Path, probe_path: str, command: list[str] | None = None,
                  args: list[str] | None = None) -> tuple[Path, Path]:
    """A ServingRuntime whose container is Python's http.server (a directory listing), and an
    InferenceService that selects it: start-up takes a second, no engine involved."""
    rt = yaml.safe_load((RUNTIMES_DIR / "kserve-vllm-cpu.yaml").read_text())
    rt["metadata"]["name"] = "fake"
    c = rt["spec"]["containers"][0]
    # the port comes from a *_PORT variable, which the runner maps like any declared port
    c.update(command=command or ["python", "-c", SERVER], args=args or [],
             env=[{"name": "HTTP_PORT", "value": "8080"}])
    for kind in PROBES:
        c[kind] = {"httpGet": {"path": probe_path, "port": 8080}, "periodSeconds": 1,
                   "failureThreshold": 5}
    isvc = copy.deepcopy(example("smollm2-standard-cpu").doc)
    isvc["spec"]["predictor"]["model"].update(runtime="fake", args=[])
    del isvc["spec"]["explainer"]
    # the key Secret the predictor's volume names, as in the example's file
    [key] = [d for d in yaml.safe_load_all((EXAMPLES_DIR / "smollm2-standard-cpu.yaml")
                                           .read_text()) if d and d["kind"] == "Secret"]
    (tmp_path / "rt.yaml").write_text(yaml.safe_dump(rt))
    (tmp_path / "isvc.yaml").write_text(yaml.safe_dump_all([key, isvc]))
    return tmp_path / "isvc.yaml", tmp_path / "rt.yaml"


def _cli_run(isvc_file: Path, rt_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deployment", "run", "--isvc", str(isvc_file), "--runtime",
         str(rt_file), "--model-dir", str(isvc_file.parent), "--check", *extra],
        capture_output=True, text=True, timeout=120, cwd=REPO)


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
    done = _cli_run(isvc_file, rt_file, "--workdir", str(tmp_path / "w"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok   readinessProbe  GET :8080/" in done.stdout
    assert "all probes passed" in done.stdout
    assert (tmp_path / "w" / "logs" / "smollm2-predictor.log").is_file()  # --workdir is kept


@pytest.mark.parametrize(("probe_path", "code"), [("/", 0), ("/v2/health/ready", 1)],
                         ids=["passed", "failed"])
def test_cli_removes_the_work_directory_it_made(tmp_path: Path, probe_path: str,
                                                code: int) -> None:
    """Without --workdir the runner makes a temporary one and removes it on the way out,
    after success and after a failure (whose log tail it printed first)."""
    isvc_file, rt_file = _fake_runtime(tmp_path, probe_path)
    done = _cli_run(isvc_file, rt_file)
    assert done.returncode == code, done.stdout + done.stderr
    [workdir] = re.findall(r"^work directory: (\S+)$", done.stdout, re.M)
    assert Path(workdir).name.startswith("kserve-local-")
    assert not Path(workdir).exists(), f"{workdir} left behind"


def test_runner_removes_the_work_directory_it_made(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``LocalDeployment`` without ``workdir``: its temporary folder goes in ``stop()``, and at
    once when a plan cannot be localised; a given ``workdir`` stays."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    isvc_file, rt_file = _fake_runtime(tmp_path, "/")
    manifests = load_manifests([isvc_file, rt_file])

    def plans() -> list[ContainerPlan]:
        return plan(find_isvc(manifests), manifests, ("predictor",))

    dep = LocalDeployment(plans(), model_dir=tmp_path, echo=lambda _: None)
    assert dep.workdir.parent == tmp_path / "tmp" and dep.volumes_dir.is_dir()
    # emptyDirs apart, under a short path: the Unix sockets made there fit in 107 bytes
    assert len(str(dep.volumes_dir / "0" / ("x" * 66))) < 107
    try:
        dep.start()
    finally:
        dep.stop()
    assert list((tmp_path / "tmp").iterdir()) == [] and not dep.volumes_dir.exists()
    broken = plans()
    broken[0].container["env"].append({"name": "X", "valueFrom": {"secretKeyRef": {}}})
    with pytest.raises(ManifestError, match="give it with --env"):
        LocalDeployment(broken, model_dir=tmp_path)
    assert list((tmp_path / "tmp").iterdir()) == []
    kept = LocalDeployment(plans(), model_dir=tmp_path, workdir=tmp_path / "kept",
                           echo=lambda _: None)
    kept.stop()
    assert (tmp_path / "kept").is_dir()  # a given workdir stays
    assert not kept.volumes_dir.exists()  # an emptyDir ends with its pod


# A key in every form the runner may print: inside the container's `bash -c` script (as
# KServe's LLMInferenceService template runs `vllm serve`), and as arguments after `--`.
KEYS = ("sekret-1", "sekret-2", "sekret 3", "sekret-4", "sekret-5")


def test_cli_run_never_prints_a_key(tmp_path: Path) -> None:
    """The runner's real output (``[pod] argv`` lines, probes, URLs) holds no key, though the
    container it started was given them all (a script with keys, and keys as arguments)."""
    script = (f"echo \"given: $*\"; exec python -c \"{SERVER}\" --api-key sekret-1 "
              "--api_key=sekret-2 --predictor-api-key 'sekret 3' \"$@\"")
    isvc_file, rt_file = _fake_runtime(
        tmp_path, "/", command=["/bin/bash", "-c", script],
        args=["--", "--api_key", "sekret-4", "--predictor_api_key=sekret-5"])
    done = _cli_run(isvc_file, rt_file, "--workdir", str(tmp_path / "w"))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "all probes passed" in done.stdout
    [line] = [ln for ln in done.stdout.splitlines() if ln.startswith("[smollm2-predictor] /")]
    assert "--api-key *** --api_key=*** --predictor-api-key ***" in line, line
    assert line.endswith("-- --api_key *** --predictor_api_key=***"), line
    assert not [k for k in KEYS if k in out], out
    # while the container was given its keys: only what the runner prints is redacted
    log = (tmp_path / "w" / "logs" / "smollm2-predictor.log").read_text()
    assert "given: --api_key sekret-4 --predictor_api_key=sekret-5" in log, log


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
