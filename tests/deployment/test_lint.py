"""Linters that can run without Docker or Kubernetes: hadolint on the Dockerfiles, checkov on
the Pods the manifests would create.

checkov knows no KServe kinds (a ServingRuntime passes with zero checks run), so the containers
of every runtime and InferenceService component are wrapped into Pod documents first
(``python -m deployment pods``), next to the examples' NetworkPolicies. A skipped check must be
justified by a ``checkov:skip=ID:reason`` comment on the manifest line it concerns.

checkov pins old versions of packaging, networkx and cachetools that would break vLLM's venv,
so it lives in its own target folder: ``.venv/bin/pip install --target .cache/checkov
checkov==3.3.30`` (or set CHECKOV_PYTHONPATH to another such folder).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployment.manifests import load_manifests, plan, select_runtime
from deployment.pods import pod_documents
from tests.deployment.conftest import DOCKER_DIR, EXAMPLE_FILES, REPO, RUNTIME_FILES, example

HADOLINT = Path(sys.executable).parent / "hadolint"
DOCKERFILES = sorted(DOCKER_DIR.glob("Dockerfile.*"))
CHECKOV_PATH = Path(os.environ.get("CHECKOV_PYTHONPATH", REPO / ".cache" / "checkov"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    done = subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter is really looking: an unpinned, root, latest-tagged image fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    done = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and "DL3007" in done.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_pinned_and_carry_no_model(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) >= 2, "multi-stage: a build stage and a slim runtime stage"
    assert all(re.search(r":\d+\.\d+\.\d+", f) for f in froms), froms
    assert re.findall(r"^USER (\S+)", text, re.M)[-1] == "1000:1000"
    instructions = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    for ln in instructions:
        if ln.startswith(("COPY", "ADD")):
            assert not re.search(r"model|\.gguf|\.safetensors", ln, re.I), ln
        assert not re.search(r"snapshot_download|huggingface-cli|hf download", ln), ln
    for req in re.findall(r'"([A-Za-z][\w.\[\]-]*(?:==|>=)[^"]+)"', text):
        assert "==" in req, f"unpinned requirement {req}"


def _checkov(target: Path) -> dict:
    if not (CHECKOV_PATH / "checkov").is_dir():
        pytest.fail(f"checkov is not installed in {CHECKOV_PATH}: run `.venv/bin/pip install "
                    f"--target {CHECKOV_PATH} checkov==3.3.30`")
    env = dict(os.environ, PYTHONPATH=str(CHECKOV_PATH), BC_SKIP_MAPPING="TRUE")
    done = subprocess.run([sys.executable, "-m", "checkov.main", "--framework", "kubernetes",
                           "--skip-download", "--compact", "-o", "json", "-d",
                           str(target)], capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.strip(), done.stderr[-2000:]
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


def expected_pod_names(isvc, runtimes) -> list[str]:
    """The pods KServe creates for an InferenceService, read from the YAML: a predictor (the
    head when its runtime has a ``workerSpec``), ``pipelineParallelSize - 1`` workers (the
    InferenceService's ``predictor.workerSpec`` over the runtime's), an explainer if it has
    one."""
    name, spec = isvc.doc["metadata"]["name"], isvc.doc["spec"]
    names = [f"{name}-predictor"]
    worker_rt = select_runtime(isvc.doc, runtimes).doc["spec"].get("workerSpec")
    if worker_rt:
        nodes = int(spec["predictor"].get("workerSpec", {}).get(
            "pipelineParallelSize", worker_rt.get("pipelineParallelSize", 1)))
        names += [f"{name}-predictor-worker-{i}" for i in range(nodes - 1)]
    if spec.get("explainer"):
        names.append(f"{name}-explainer")
    return sorted(names)


def test_checkov_passes_on_every_pod_the_manifests_create(tmp_path: Path) -> None:
    runtimes = load_manifests(RUNTIME_FILES)
    pods = []
    for f in EXAMPLE_FILES:
        isvc = example(f.stem)
        docs = pod_documents(plan(isvc, runtimes))
        assert sorted(d["metadata"]["name"] for d in docs) == expected_pod_names(isvc, runtimes)
        pods += docs
        policies = [d for d in yaml.safe_load_all(f.read_text()) if d and
                    d["kind"] == "NetworkPolicy"]
        (tmp_path / f.name).write_text(yaml.safe_dump_all(docs + policies, sort_keys=False))
    assert len(pods) == sum(len(expected_pod_names(example(f.stem), runtimes))
                            for f in EXAMPLE_FILES)
    report = _checkov(tmp_path)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['check_name']} ({c['resource']})"
              for c in report["results"]["failed_checks"]]
    assert failed == [], failed
    assert summary["passed"] >= 50 * len(pods), summary  # it really ran its Kubernetes checks
    skipped = report["results"].get("skipped_checks", [])
    assert summary["skipped"] == len(skipped)
    for s in skipped:
        reason = s["check_result"].get("suppress_comment", "")
        assert len(reason) > 20 and reason != "No comment provided", s["check_id"]


def test_checkov_sees_what_a_skip_would_hide(tmp_path: Path) -> None:
    """Without the justified skips the same Pods fail exactly the skipped checks: the skips are
    needed, and checkov really evaluates the rendered Pods."""
    runtimes = load_manifests(RUNTIME_FILES)
    docs = pod_documents(plan(example("smollm2-standard-cpu"), runtimes))
    for d in docs:
        d["metadata"]["annotations"] = {}
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    report = _checkov(tmp_path)
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert {"CKV_K8S_43", "CKV_K8S_40", "CKV_K8S_21"} <= failed, failed
