"""The manifests under servingruntimes/: schema-valid, and they select and run what they claim.

Schema: every KServe document is validated against the openAPIV3Schema of its CRD, strictly
(unknown fields are errors, as with `kubectl apply --validate=strict`; the API server would
silently drop them). The rest checks the controller-side logic the local runner relies on
(runtime selection, container merge, placeholders, multi-node env) and the invariants the
issue asks of every container (probes on routes that reflect the engine, non-root, read-only).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
import yaml

from deployment.manifests import ManifestError, load_manifests, plan, select_runtime
from tests.deployment.conftest import ALL_YAML, DOCKER_DIR, EXAMPLE_FILES, example, runtimes

KSERVE_KINDS = {"ServingRuntime", "ClusterServingRuntime", "InferenceService"}
OTHER_KINDS = {"NetworkPolicy", "Secret"}  # core kinds: checked by check_core_document
# Knative Serving's webhook refuses a volume mounted at one of these (``reservedPaths`` in
# knative.dev/serving, pkg/apis/serving/k8s_validation.go).
KNATIVE_RESERVED_PATHS = {"/", "/dev", "/dev/log", "/tmp", "/var", "/var/log"}
SCRATCH = "/scratch"  # the writable emptyDir of every container (read-only root filesystem)


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever it lists ``properties`` and does
    not already allow unknown fields."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def validators(schemas: dict[str, Any]) -> dict[str, jsonschema.Draft7Validator]:
    return {key: jsonschema.Draft7Validator(strict(s)) for key, s in schemas.items()}


def _errors(validators: dict[str, jsonschema.Draft7Validator], doc: dict) -> list[str]:
    v = validators[f"{doc['apiVersion']}/{doc['kind']}"]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
            for e in v.iter_errors(doc)]


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: p.name)
def test_every_document_matches_its_crd_schema(path, validators) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        if doc["kind"] in OTHER_KINDS:
            check_core_document(doc)
            continue
        assert doc["kind"] in KSERVE_KINDS, f"{path.name}: unexpected kind {doc['kind']}"
        assert _errors(validators, doc) == [], f"{path.name} ({doc['kind']})"


def check_core_document(doc: dict[str, Any]) -> None:
    """The Kubernetes kinds the examples ship next to KServe's (no CRD schema here): their
    fields as the API knows them, strictly (an unknown field would be dropped silently)."""
    if doc["kind"] == "Secret":
        assert doc["apiVersion"] == "v1" and doc.get("type", "Opaque") == "Opaque", doc
        assert set(doc) <= {"apiVersion", "kind", "metadata", "type", "data", "stringData"}, doc
        assert set(doc["metadata"]) == {"name"}, doc  # the namespace comes from kubectl -n
        values = {**(doc.get("data") or {}), **(doc.get("stringData") or {})}
        assert values and all(isinstance(v, str) and v for v in values.values()), doc
        return
    assert doc["kind"] == "NetworkPolicy" and doc["apiVersion"] == "networking.k8s.io/v1", doc
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, doc
    spec = doc["spec"]
    assert set(spec) <= {"podSelector", "policyTypes", "ingress", "egress"}, spec
    assert spec["podSelector"]["matchLabels"] and spec["policyTypes"] == ["Ingress"], spec
    for rule in spec["ingress"]:
        assert set(rule) <= {"from", "ports"}, rule
        for peer in rule.get("from", []):
            assert set(peer) <= {"podSelector", "namespaceSelector", "ipBlock"}, peer
            for sel in ("podSelector", "namespaceSelector"):
                assert set(peer.get(sel, {})) <= {"matchLabels", "matchExpressions"}, peer
        for port in rule.get("ports", []):
            assert set(port) <= {"port", "protocol", "endPort"}, port
            assert isinstance(port["port"], int) and port.get("protocol", "TCP") == "TCP", port


def test_strict_validation_catches_a_typo_and_a_bad_quantity(validators) -> None:
    doc = copy.deepcopy(example("smollm2-standard-cpu").doc)
    doc["spec"]["predictor"]["minReplica"] = 1  # typo of minReplicas
    doc["spec"]["predictor"]["model"]["resources"]["limits"]["memory"] = "6 GB"
    errors = _errors(validators, doc)
    assert any("minReplica" in e for e in errors), errors
    assert any("resources/limits/memory" in e for e in errors), errors


def test_each_example_selects_the_runtime_it_documents() -> None:
    rts = runtimes()
    chosen = {f.stem: select_runtime(example(f.stem).doc, rts).doc["metadata"]["name"]
              for f in EXAMPLE_FILES}
    assert chosen == {"smollm2-standard-cpu": "kserve-vllm-cpu",  # auto-selected by format
                      "smollm2-knative-cpu": "kserve-vllm-knative",
                      "smollm2-lora-cpu": "kserve-vllm-cpu",
                      "smollm2-autoscaling-cpu": "kserve-vllm-cpu",
                      "qwen-standard-gpu": "kserve-vllm-gpu",
                      "qwen-multinode-gpu": "kserve-vllm-multinode"}


def test_runtime_selection_rules() -> None:
    rts = runtimes()
    isvc = copy.deepcopy(example("smollm2-standard-cpu").doc)
    isvc["spec"]["predictor"]["model"]["protocolVersion"] = "v1"  # not spoken by our runtimes
    with pytest.raises(ManifestError, match="no runtime auto-selects"):
        select_runtime(isvc, rts)
    isvc["spec"]["predictor"]["model"].update(protocolVersion="v2", runtime="kserve-vllm-gpu")
    isvc["spec"]["predictor"]["model"]["modelFormat"]["name"] = "sklearn"
    with pytest.raises(ManifestError, match="does not support model format 'sklearn'"):
        select_runtime(isvc, rts)
    isvc["spec"]["predictor"]["model"]["runtime"] = "nope"
    with pytest.raises(ManifestError, match="not found"):
        select_runtime(isvc, rts)


def test_predictor_command_is_the_runtime_with_the_isvc_name_and_args() -> None:
    [p] = plan(example("smollm2-standard-cpu"), runtimes(), ["predictor"])
    c = p.container
    assert c["command"] == ["python", "-m", "runtime"]
    assert c["args"][:4] == ["--model_name=smollm2", "--model_dir=/mnt/models",
                             "--http_port=8080", "--grpc_port=8081"]
    # the InferenceService's args come last
    assert c["args"][-2:] == ["--max-model-len=2048", "--drain_timeout=110"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"  # the InferenceService's env wins
    assert c["resources"]["limits"]["memory"] == "6Gi"
    assert "{{" not in yaml.safe_dump(c)


def test_explainer_gets_the_arguments_kserve_appends() -> None:
    plans = plan(example("smollm2-knative-cpu"), runtimes())
    [e] = [p for p in plans if p.component == "explainer"]
    assert e.container["command"] == ["python", "-m", "explainers"]
    assert e.container["args"] == ["--model_dir=/mnt/models", "--predictor_timeout=300",
                                   "--predictor_api_key_file=/etc/kserve-vllm/api-key/key",
                                   "--api_key_file=/etc/kserve-vllm/api-key/key",
                                   "--model_name", "smollm2-knative",
                                   "--predictor_host", "smollm2-knative-predictor.default",
                                   "--http_port", "8080"]
    for kind in ("startupProbe", "readinessProbe"):  # these follow the predictor
        assert e.container[kind]["httpGet"]["path"] == "/v1/models/smollm2-knative"
    assert e.container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"  # its own


def test_multinode_plan_has_a_head_and_a_worker_per_extra_stage() -> None:
    plans = plan(example("qwen-multinode-gpu"), runtimes())
    assert [p.role for p in plans] == ["head", "worker"]
    head, worker = plans
    assert head.container["command"] == ["python", "-m", "deployment.ray_bootstrap", "head"]
    assert worker.container["command"] == ["python", "-m", "deployment.ray_bootstrap", "worker"]
    assert head.injected_env == {"RAY_NODE_COUNT": "2", "PIPELINE_PARALLEL_SIZE": "2",
                                 "TENSOR_PARALLEL_SIZE": "4", "ISVC_NAME": "qwen-72b"}
    assert worker.injected_env["HEAD_SVC"] == "qwen-72b-predictor-head"
    assert worker.container["resources"]["limits"]["nvidia.com/gpu"] == "4"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_every_container_is_probed_hardened_and_sized(path) -> None:
    isvc = example(path.stem)
    for p in plan(isvc, runtimes()):
        c, where = p.container, f"{path.stem}/{p.pod_name}"
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert kind in c, f"{where}: no {kind}"
        if p.component == "predictor" and p.role != "worker":
            # routes that answer 200 only while the engine is up (ready) / the process (live)
            assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
            assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
            assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
            start = c["startupProbe"]
            assert start["periodSeconds"] * start["failureThreshold"] >= 600, where
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000, where
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"], where
        assert c["resources"]["requests"] and c["resources"]["limits"], where
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        # every example, whatever its mode, mounts what Knative would accept
        assert not mounts & KNATIVE_RESERVED_PATHS, f"{where}: {mounts} (Knative refuses)"
        tmpdir = {e["name"]: e.get("value") for e in c.get("env", [])}.get("TMPDIR")
        assert tmpdir == SCRATCH in mounts, f"{where}: read-only root needs a writable TMPDIR"
        if p.component == "predictor":
            assert "/dev/shm" in mounts, where
            vols = {v["name"]: v for v in p.pod["volumes"]}
            assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
        for env in c.get("env", []):
            if env.get("value", "").startswith("/") and env["name"] != "LD_PRELOAD":
                assert env["value"].startswith(SCRATCH), f"{where}: {env} is not writable"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_drain_fits_in_the_termination_grace_period(path) -> None:
    """The runtime's drain on SIGTERM must end before the kubelet's SIGKILL (default 30 s)."""
    for p in plan(example(path.stem), runtimes(), ["predictor"]):
        drains = [float(a.split("=")[1]) for a in p.container.get("args", [])
                  if a.startswith("--drain_timeout=")]
        drain = drains[-1] if drains else 25.0  # the runtime's default
        assert drain < p.pod.get("terminationGracePeriodSeconds", 30), p.pod_name


def test_images_run_as_the_user_the_manifests_expect() -> None:
    for dockerfile in DOCKER_DIR.glob("Dockerfile.*"):
        text = dockerfile.read_text()
        assert "USER 1000:1000" in text and "--uid 1000" in text, dockerfile.name


def test_knative_runtime_declares_a_single_port() -> None:
    [rt] = [m for m in runtimes() if m.doc["metadata"]["name"] == "kserve-vllm-knative"]
    assert len(rt.doc["spec"]["containers"][0]["ports"]) == 1


def test_load_manifests_skips_empty_documents(tmp_path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("---\n# only a comment\n---\nkind: InferenceService\nmetadata: {name: a}\n")
    assert [m.doc["kind"] for m in load_manifests([f])] == ["InferenceService"]
