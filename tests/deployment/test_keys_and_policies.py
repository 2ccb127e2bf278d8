"""Every example runs with an inference key from a Secret, and admits only what must reach it.

Issue 24, finding 5: the examples shipped without a key and with a NetworkPolicy that admitted
the whole cluster. Here, from the files alone (fast tier): each predictor (and LLMInferenceService
workload) container reads its key from a file of a mounted Secret that the example's file
defines (``--api_key_file``, re-read on rotation), nothing puts a key on a command line, the
explainer sends the predictor that same key, no operator key is mounted where no operator action
is on, probes ask routes that need no key, and every NetworkPolicy peer names who it admits (no
rule without ``from``, no empty selector, no 0.0.0.0/0) while every pod is selected by one. The
local runner writes each Secret's data as the kubelet would mount it. The slow tests of
test_local_runner.py, test_lora_example.py and test_llmisvc_runner.py then run the examples with
those keys for real (clients send them; the probes pass without them).
"""

from __future__ import annotations

import copy
import os
import shlex
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployment.llmisvc import find_llmisvc, plan_llmisvc
from deployment.local import LocalDeployment
from deployment.manifests import ContainerPlan, ManifestError, load_manifests, plan
from tests.deployment.conftest import (
    EXAMPLE_FILES,
    REPO,
    RUNTIME_FILES,
    example,
    example_key,
    runtimes,
)

LLMISVC_FILES = sorted((REPO / "llmisvc").glob("*.yaml"))
ALL_EXAMPLES = [*EXAMPLE_FILES, *LLMISVC_FILES]
KEY_FLAGS = ("--api_key", "--api-key")  # a key on a command line: what must not be there
# Routes that answer without a key (docs/security.md, "anyone"): what probes may ask.
KEYLESS = ("/v2/health/ready", "/v2/health/live", "/health", "/")


def _plans(path: Path) -> list[ContainerPlan]:
    llm = find_llmisvc(load_manifests([path]))
    return plan_llmisvc(llm) if llm is not None else plan(example(path.stem), runtimes())


def _words(c: dict[str, Any]) -> list[str]:
    """The container's arguments, with the words of every env value (VLLM_ADDITIONAL_ARGS is
    appended to `vllm serve`'s command line by KServe's template)."""
    words = [*c.get("command", []), *c.get("args", [])]
    for var in c.get("env", []):
        words += shlex.split(str(var.get("value", "")))
    return words


def _flag(words: list[str], flag: str) -> list[str]:
    return [w.split("=", 1)[1] for w in words if w.startswith(f"{flag}=")] + \
        [words[i + 1] for i, w in enumerate(words[:-1]) if w == flag]


def _secret_of_file(p: ContainerPlan, path: str) -> str:
    """The Secret whose volume holds ``path`` in this container: mounted whole (no subPath:
    a rotated key reaches the file) and read-only."""
    folder = os.path.dirname(path)
    [mount] = [m for m in p.container.get("volumeMounts", []) if m["mountPath"] == folder]
    assert mount.get("readOnly") is True and "subPath" not in mount, mount
    [vol] = [v for v in p.pod["volumes"] if v["name"] == mount["name"]]
    return str(vol["secret"]["secretName"])


def _serving(p: ContainerPlan) -> bool:
    return p.component in ("predictor", "workload") and p.role != "worker"


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: p.name)
def test_every_predictor_takes_its_key_from_a_secret_the_example_defines(path: Path) -> None:
    plans = _plans(path)
    predictors = [p for p in plans if _serving(p)]
    assert predictors, path.name
    for p in predictors:
        words = _words(p.container)
        [key_file] = _flag(words, "--api_key_file")
        secret = _secret_of_file(p, key_file)
        # defined in the example's own file, with the entry the flag reads
        assert os.path.basename(key_file) in p.secrets[secret], (path.name, secret)
        assert example_key(path, secret)
        for flag in KEY_FLAGS:
            assert not _flag(words, flag), f"{path.name}: a key on the command line ({flag})"
        assert not [v for v in p.container.get("env", []) if v["name"] in ("API_KEY",
                                                                             "VLLM_API_KEY")
                    and "value" in v], path.name
    for e in (p for p in plans if p.component == "explainer"):
        # the explainer calls the predictor with the predictor's key, from the same Secret
        [key_file] = _flag(_words(e.container), "--predictor_api_key_file")
        assert _secret_of_file(e, key_file) == _secret_of_file(
            predictors[0], _flag(_words(predictors[0].container), "--api_key_file")[0])


@pytest.mark.parametrize("path", RUNTIME_FILES, ids=lambda p: p.name)
def test_every_runtime_needs_a_key_secret(path: Path) -> None:
    """An InferenceService that names no Secret of its own still gets a key: the runtime reads
    it from the Secret kserve-vllm-api-key (without which the pod does not start)."""
    [rt] = [m.doc for m in load_manifests([path]) if m.doc["kind"].endswith("ServingRuntime")]
    c = rt["spec"]["containers"][0]
    [key_file] = _flag(c["args"], "--api_key_file")
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == os.path.dirname(key_file)]
    assert mount["readOnly"] is True and "subPath" not in mount
    [vol] = [v for v in rt["spec"]["volumes"] if v["name"] == mount["name"]]
    assert vol["secret"] == {"secretName": "kserve-vllm-api-key"}  # not optional


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: p.name)
def test_operator_key_only_where_an_operator_action_is_on(path: Path) -> None:
    for p in _plans(path):
        words = _words(p.container)
        on = any(_flag(words, f) == ["true"] for f in ("--enable_adapter_loading",
                                                       "--enable_operator_routes"))
        has = bool(_flag(words, "--operator_key_file"))
        assert has == on, (path.name, p.pod_name, on, has)
        assert not _flag(words, "--operator_key"), path.name


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: p.name)
def test_probes_ask_routes_that_need_no_key(path: Path) -> None:
    for p in _plans(path):
        name = (p.labels.get("serving.kserve.io/inferenceservice")
                or p.labels.get("app.kubernetes.io/name"))
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = p.container[kind].get("httpGet")
            if get:  # exec probes (Ray workers) send no HTTP request
                assert get["path"] in (*KEYLESS, f"/v1/models/{name}"), (p.pod_name, kind)
                assert "httpHeaders" not in get, "a probe carrying a key"


# ----- NetworkPolicies ------------------------------------------------------------------------
def whole_cluster_peers(policy: dict[str, Any]) -> list[str]:
    """Why a NetworkPolicy admits more than named peers: a rule without ``from`` (every
    source), an empty ``namespaceSelector`` (every namespace), one that names no namespace,
    a bare empty ``podSelector`` (every pod of the namespace), any ``ipBlock``."""
    found = []
    for i, rule in enumerate(policy["spec"].get("ingress", [])):
        if not rule.get("from"):
            found.append(f"rule {i}: no `from`: every source in and outside the cluster")
        for peer in rule.get("from") or []:
            ns = peer.get("namespaceSelector")
            if "ipBlock" in peer:
                found.append(f"rule {i}: ipBlock {peer['ipBlock']}")
            elif ns is not None and "kubernetes.io/metadata.name" not in ns.get("matchLabels",
                                                                                 {}):
                found.append(f"rule {i}: namespaceSelector {ns} names no namespace")
            elif ns is None and not (peer.get("podSelector") or {}).get("matchLabels"):
                found.append(f"rule {i}: podSelector {peer.get('podSelector')} selects every "
                             "pod of the namespace")
    return found


def _policies(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: p.name)
def test_network_policies_admit_no_whole_cluster_peer_and_cover_every_pod(path: Path) -> None:
    policies = _policies(path)
    assert policies, path.name
    for policy in policies:
        assert whole_cluster_peers(policy) == [], (path.name, policy["metadata"]["name"])
        own = policy["spec"]["podSelector"]
        for rule in policy["spec"]["ingress"]:
            # only the selected pods among themselves (Ray's head and workers) on any port
            assert rule.get("ports") or rule["from"] == [{"podSelector": own}], rule
    for p in _plans(path):  # a pod that no policy selects admits everything
        labels = {**p.labels, "role": p.role}
        assert any(policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
                   for policy in policies), (path.name, p.pod_name, labels)


def test_the_check_catches_what_the_examples_shipped_before() -> None:
    """The policy the examples had (serving ports open to every source) and other wide peers."""
    old = {"spec": {"ingress": [{"ports": [{"port": 8080}, {"port": 8081}]}]}}
    assert whole_cluster_peers(old) == ["rule 0: no `from`: every source in and outside the "
                                        "cluster"]
    for peer in ({"namespaceSelector": {}}, {"podSelector": {}},
                 {"ipBlock": {"cidr": "0.0.0.0/0"}},
                 {"namespaceSelector": {"matchLabels": {"team": "a"}}}):
        wide = {"spec": {"ingress": [{"from": [peer], "ports": [{"port": 8080}]}]}}
        assert len(whole_cluster_peers(wide)) == 1, peer


# ----- the local runner provides the Secrets ----------------------------------------------------
def test_runner_writes_the_examples_key_secret_as_the_kubelet_mounts_it(tmp_path: Path) -> None:
    path = EXAMPLE_FILES[0].parent / "smollm2-standard-cpu.yaml"
    dep = LocalDeployment(plan(example(path.stem), runtimes()), model_dir=tmp_path,
                          workdir=tmp_path / "w", echo=lambda _: None)
    pred, expl = dep.containers
    [key_file] = _flag(pred.argv, "--api_key_file")
    assert key_file == str(tmp_path / "w" / "secrets" / "smollm2-api-key" / "key")
    assert Path(key_file).read_text() == example_key(path) == "replace-with-a-random-key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert _flag(expl.argv, "--predictor_api_key_file") == [key_file]
    # a Secret given as a folder (--secret NAME=DIR) stands for the manifests' one
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "key").write_text("my-own-key")
    dep = LocalDeployment(plan(example(path.stem), runtimes(), ["predictor"]),
                          model_dir=tmp_path, workdir=tmp_path / "w2", echo=lambda _: None,
                          secrets={"smollm2-api-key": mine})
    assert _flag(dep.containers[0].argv, "--api_key_file") == [str(mine / "key")]


def test_runner_writes_the_llmisvc_key_into_vllm_additional_args(tmp_path: Path) -> None:
    llm = find_llmisvc(load_manifests([REPO / "llmisvc" / "smollm2-cpu.yaml"]))
    assert llm is not None
    dep = LocalDeployment(plan_llmisvc(llm), model_dir=tmp_path, workdir=tmp_path / "w",
                          echo=lambda _: None,
                          secrets={"smollm2-kserve-self-signed-certs": tmp_path / "tls"})
    [c] = dep.containers
    [key_file] = _flag(shlex.split(c.env["VLLM_ADDITIONAL_ARGS"]), "--api_key_file")
    assert Path(key_file).read_text() == example_key(REPO / "llmisvc" / "smollm2-cpu.yaml")


def test_runner_refuses_a_secret_it_cannot_provide_and_reads_secret_key_refs(
        tmp_path: Path) -> None:
    [p] = plan(example("smollm2-standard-cpu"), runtimes(), ["predictor"])
    missing = copy.deepcopy(p)
    missing.secrets = {}
    with pytest.raises(ManifestError, match="give --secret smollm2-api-key=DIR"):
        LocalDeployment([missing], model_dir=tmp_path, workdir=tmp_path / "w")
    ref = copy.deepcopy(p)
    ref.container["env"].append({"name": "API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "smollm2-api-key", "key": "key"}}})
    dep = LocalDeployment([ref], model_dir=tmp_path, workdir=tmp_path / "w2", echo=lambda _: None)
    assert dep.containers[0].env["API_KEY"] == "replace-with-a-random-key"
