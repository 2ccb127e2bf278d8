"""What KServe's controller would run for an InferenceService, computed from YAML alone.

Why: neither a Kubernetes API server nor the KServe controller can run here, yet a manifest that
selects the wrong runtime or starts the wrong command fails only in a cluster. This module
reproduces the controller's decisions that shape the containers (runtime selection by name or by
auto-selected model format, the merge of the InferenceService's container fields into the
runtime's container, ``{{.Name}}`` placeholders, the arguments appended to an explainer, the
environment injected into multi-node pods) so the local runner and the Pod renderer share one
answer. It neither starts processes nor talks to a cluster.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RUNTIME_KINDS = ("ServingRuntime", "ClusterServingRuntime")
ISVC_KIND = "InferenceService"
DEFAULT_NAMESPACE = "default"
# Container fields of an InferenceService's `model` that describe the model, not the container.
MODEL_ONLY_FIELDS = ("modelFormat", "runtime", "runtimeVersion", "storageUri", "storage",
                     "protocolVersion")
# Pod-level fields an InferenceService component may set (ComponentExtensionSpec and PodSpec).
COMPONENT_EXTENSION_FIELDS = ("minReplicas", "maxReplicas", "scaleTarget", "scaleMetric",
                              "scaleMetricType", "containerConcurrency", "timeout",
                              "canaryTrafficPercent", "logger", "batcher", "labels",
                              "annotations", "deploymentStrategy", "autoScaling")
MODEL_MOUNT = "/mnt/models"  # where KServe's storage initializer puts ``storageUri``
_PLACEHOLDER = re.compile(r"\{\{\s*\.(Name|Namespace|Labels\.([^ }]+)|Annotations\.([^ }]+))\s*\}\}")


class ManifestError(ValueError):
    """The manifests cannot be turned into containers (what `kubectl apply` or KServe would reject)."""


@dataclass
class ContainerPlan:
    """One container KServe would run, after runtime selection, merging and placeholders.

    ``container`` is a Kubernetes container (paths and ports as in the manifest); ``pod`` holds
    the pod-level fields (volumes, securityContext, ...) of the pod it runs in; ``injected_env``
    is the environment the controller adds; ``sources`` are the manifest texts it came from (for
    their ``checkov:skip`` justifications); ``storage`` lists what the storage initializer
    would download before the container starts (``{"uri": ..., "mountPath": ...}``);
    ``image_env`` is what the image's own ``ENV`` provides and the container's env overrides
    (for an LLMInferenceService: the PATH on which ``vllm`` is this runtime); ``secrets`` are
    the Secrets defined in the manifests' files (name -> {key: value}), what ``kubectl apply``
    of those files would create for the pod's Secret volumes and ``secretKeyRef`` variables.
    """

    component: str
    pod_name: str
    role: str
    container: dict[str, Any]
    pod: dict[str, Any]
    injected_env: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    storage: list[dict[str, str]] = field(default_factory=list)
    image_env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class Manifest:
    """A parsed YAML document and the text of the file it came from."""

    doc: dict[str, Any]
    text: str
    path: str


def load_manifests(paths: Iterable[str | Path]) -> list[Manifest]:
    """Every non-empty YAML document of the given files."""
    out: list[Manifest] = []
    for path in paths:
        text = Path(path).read_text()
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append(Manifest(doc=doc, text=text, path=str(path)))
    return out


def secrets_in(texts: Iterable[str]) -> dict[str, dict[str, str]]:
    """Every ``kind: Secret`` document of the given manifest texts: name -> {key: value}, the
    base64 ``data`` decoded and ``stringData`` over it, as the API server stores them."""
    out: dict[str, dict[str, str]] = {}
    for text in texts:
        for doc in yaml.safe_load_all(text):
            if not doc or doc.get("kind") != "Secret" or doc.get("apiVersion") != "v1":
                continue
            values = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
            values.update({k: str(v) for k, v in (doc.get("stringData") or {}).items()})
            out[doc["metadata"]["name"]] = values
    return out


def find_isvc(manifests: Sequence[Manifest], name: str | None = None) -> Manifest:
    """The InferenceService to run: the only one, or the one called ``name``."""
    found = [m for m in manifests if m.doc.get("kind") == ISVC_KIND
             and (name is None or m.doc["metadata"]["name"] == name)]
    if len(found) != 1:
        names = [m.doc["metadata"]["name"] for m in manifests if m.doc.get("kind") == ISVC_KIND]
        raise ManifestError(f"expected one InferenceService{f' named {name!r}' if name else ''}, "
                            f"found {names or 'none'}")
    return found[0]


def _supports(runtime: dict[str, Any], fmt: dict[str, Any], *, auto: bool) -> bool:
    for sup in runtime["spec"].get("supportedModelFormats", []):
        if sup["name"].lower() != fmt["name"].lower():
            continue
        if fmt.get("version") and sup.get("version") and str(fmt["version"]).split(".")[0] != \
                str(sup["version"]).split(".")[0]:
            continue
        if auto and not sup.get("autoSelect", False):
            continue
        return True
    return False


def _priority(runtime: dict[str, Any], fmt: dict[str, Any]) -> int:
    for sup in runtime["spec"].get("supportedModelFormats", []):
        if sup["name"].lower() == fmt["name"].lower():
            return int(sup.get("priority", 0))
    return 0


def select_runtime(isvc: dict[str, Any], runtimes: Sequence[Manifest]) -> Manifest:
    """The runtime KServe would pick for the predictor, with KServe's rules.

    By name (``model.runtime``): a namespaced ServingRuntime wins over a ClusterServingRuntime of
    the same name; it must not be disabled and must support the model format and protocol.
    Otherwise auto-select: enabled runtimes whose format entry has ``autoSelect: true`` and that
    speak the protocol (default ``v1``); namespaced ones first, then the highest ``priority``.
    """
    model = isvc["spec"]["predictor"].get("model")
    if not model:
        raise ManifestError("spec.predictor.model is missing: only `model`-style predictors "
                            "select a ServingRuntime")
    fmt = model.get("modelFormat") or {}
    if not fmt.get("name"):
        raise ManifestError("spec.predictor.model.modelFormat.name is missing")
    protocol = model.get("protocolVersion", "v1")
    candidates = [m for m in runtimes if m.doc.get("kind") in RUNTIME_KINDS]

    def speaks(rt: dict[str, Any]) -> bool:
        return protocol in rt["spec"].get("protocolVersions", ["v1"])

    if model.get("runtime"):
        named = [m for m in candidates if m.doc["metadata"]["name"] == model["runtime"]]
        named.sort(key=lambda m: m.doc["kind"] != "ServingRuntime")
        if not named:
            raise ManifestError(f"runtime {model['runtime']!r} not found among "
                                f"{[m.doc['metadata']['name'] for m in candidates]}")
        rt = named[0]
        if rt.doc["spec"].get("disabled"):
            raise ManifestError(f"runtime {model['runtime']!r} is disabled")
        if not _supports(rt.doc, fmt, auto=False):
            raise ManifestError(f"runtime {model['runtime']!r} does not support model format "
                                f"{fmt['name']!r}")
        if not speaks(rt.doc):
            raise ManifestError(f"runtime {model['runtime']!r} does not speak protocol "
                                f"{protocol!r} (it lists {rt.doc['spec'].get('protocolVersions')})")
        return rt
    auto = [m for m in candidates if not m.doc["spec"].get("disabled")
            and _supports(m.doc, fmt, auto=True) and speaks(m.doc)]
    if not auto:
        raise ManifestError(f"no runtime auto-selects model format {fmt['name']!r} with "
                            f"protocol {protocol!r}")
    auto.sort(key=lambda m: (m.doc["kind"] != "ServingRuntime", -_priority(m.doc, fmt)))
    return auto[0]


def _merge_named(base: list[dict[str, Any]], over: list[dict[str, Any]], key: str) -> list[dict]:
    merged = {item[key]: item for item in base}
    for item in over:
        merged[item[key]] = {**merged.get(item[key], {}), **item}
    return list(merged.values())


def merge_container(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """KServe's merge of an InferenceService container into the runtime's container.

    ``args`` are appended to the runtime's; ``env``, ``ports`` and ``volumeMounts`` are merged
    by name / containerPort / mountPath (the InferenceService wins); ``resources`` key by key;
    any other field set by the InferenceService replaces the runtime's.
    """
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key in MODEL_ONLY_FIELDS:
            continue
        if key == "args":
            out["args"] = list(out.get("args", [])) + list(value)
        elif key == "env":
            out["env"] = _merge_named(out.get("env", []), value, "name")
        elif key == "ports":
            out["ports"] = _merge_named(out.get("ports", []), value, "containerPort")
        elif key == "volumeMounts":
            out["volumeMounts"] = _merge_named(out.get("volumeMounts", []), value, "mountPath")
        elif key == "resources":
            res = out.setdefault("resources", {})
            for kind, amounts in value.items():
                res[kind] = {**res.get(kind, {}), **amounts}
        else:
            out[key] = copy.deepcopy(value)
    return out


def substitute(value: Any, meta: dict[str, Any]) -> Any:
    """Replace KServe's placeholders (``{{.Name}}``, ``{{.Namespace}}``, ``{{.Labels.k}}``,
    ``{{.Annotations.k}}``) in every string of a container, as the controller does."""
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            if m.group(1) == "Name":
                return meta["name"]
            if m.group(1) == "Namespace":
                return meta.get("namespace", DEFAULT_NAMESPACE)
            if m.group(2):
                return meta.get("labels", {}).get(m.group(2), "")
            return meta.get("annotations", {}).get(m.group(3), "")
        return _PLACEHOLDER.sub(repl, value)
    if isinstance(value, list):
        return [substitute(v, meta) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, meta) for k, v in value.items()}
    return value


def _pod_fields(component: dict[str, Any], exclude: Sequence[str]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in component.items()
            if k not in COMPONENT_EXTENSION_FIELDS and k not in exclude}


def _runtime_pod(runtime: dict[str, Any], component: dict[str, Any],
                 exclude: Sequence[str]) -> dict[str, Any]:
    pod = {k: copy.deepcopy(v) for k, v in runtime.items()
           if k in ("volumes", "nodeSelector", "affinity", "tolerations", "imagePullSecrets",
                    "hostIPC", "schedulerName")}
    own = _pod_fields(component, exclude)
    pod["volumes"] = _merge_named(pod.get("volumes", []), own.pop("volumes", []), "name")
    pod.update(own)
    return pod


def deployment_mode(isvc: dict[str, Any]) -> str:
    """``Standard`` or ``Knative``, from the annotation (legacy names accepted)."""
    mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode",
                                                       "Standard")
    return {"RawDeployment": "Standard", "Serverless": "Knative"}.get(mode, mode)


def _common_parent(paths: Sequence[str]) -> str:
    parts = [p.rstrip("/").split("/") for p in paths]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return "/".join(common) or "/"


def storage_locations(predictor: dict[str, Any]) -> list[dict[str, str]]:
    """What KServe's storage initializer puts where for a predictor, checked as its webhook
    checks it: ``model.storageUri`` goes to /mnt/models; each ``storageUris`` entry to its
    ``mountPath`` (default /mnt/models), which must be absolute, without ``..``, and share a
    parent folder other than ``/`` with the other non-PVC entries (they share one volume).
    Both fields at once are refused, as KServe refuses them."""
    uri = (predictor.get("model") or {}).get("storageUri")
    many = predictor.get("storageUris")
    if uri and many:
        raise ManifestError("predictor sets both model.storageUri and storageUris: KServe "
                            "refuses this (Setting both StorageURI and StorageURIs is not "
                            "supported)")
    if uri:
        return [{"uri": uri, "mountPath": MODEL_MOUNT}]
    out = []
    for entry in many or []:
        path = entry.get("mountPath", MODEL_MOUNT)
        if not path.startswith("/") or path == "/" or ".." in path:
            raise ManifestError(f"storageUris mountPath {path!r} must be an absolute folder "
                                "other than / and without '..'")
        out.append({"uri": entry["uri"], "mountPath": path})
    shared = [e["mountPath"] for e in out if not e["uri"].startswith("pvc://")]
    if len(shared) > 1 and _common_parent(shared) == "/":
        raise ManifestError(f"storageUris mount paths {shared} have no common parent folder "
                            "beyond /: KServe mounts them on one volume")
    return out


def plan_predictor(isvc: Manifest, runtime: Manifest) -> list[ContainerPlan]:
    """The predictor's containers: the runtime's first container merged with ``model``, plus a
    head/worker split when the runtime has a ``workerSpec`` (multi-node on Ray)."""
    meta = isvc.doc["metadata"]
    name = meta["name"]
    pred = isvc.doc["spec"]["predictor"]
    rt_spec = runtime.doc["spec"]
    if not rt_spec.get("containers"):
        raise ManifestError(f"runtime {runtime.doc['metadata']['name']!r} has no containers")
    container = merge_container(rt_spec["containers"][0], pred["model"])
    container = substitute(container, meta)
    pod = _runtime_pod(rt_spec, pred, exclude=("model", "workerSpec", "storageUris"))
    sources = [runtime.text, isvc.text]
    storage = storage_locations(pred)
    worker_rt = rt_spec.get("workerSpec")
    worker_isvc = pred.get("workerSpec")
    if not worker_rt and not worker_isvc:
        return [ContainerPlan("predictor", f"{name}-predictor", "main", container, pod,
                              sources=sources, storage=storage)]
    if not worker_rt:
        raise ManifestError("predictor.workerSpec is set but the runtime has no workerSpec")
    sizes = {k: int((worker_isvc or {}).get(k, worker_rt.get(k, 1)))
             for k in ("pipelineParallelSize", "tensorParallelSize")}
    nodes = sizes["pipelineParallelSize"]
    head_svc = f"{name}-predictor-head"
    env = {"RAY_NODE_COUNT": str(nodes),
           "PIPELINE_PARALLEL_SIZE": str(sizes["pipelineParallelSize"]),
           "TENSOR_PARALLEL_SIZE": str(sizes["tensorParallelSize"]),
           "ISVC_NAME": name}
    worker_c = worker_rt["containers"][0]
    if worker_isvc and worker_isvc.get("containers"):
        worker_c = merge_container(worker_c, worker_isvc["containers"][0])
    worker_c = substitute(worker_c, meta)
    worker_pod = _runtime_pod(worker_rt, worker_isvc or {},
                              exclude=("containers", "pipelineParallelSize",
                                       "tensorParallelSize"))
    plans = [ContainerPlan("predictor", f"{name}-predictor", "head", container, pod, dict(env),
                           sources, storage=storage)]
    for i in range(nodes - 1):
        plans.append(ContainerPlan("predictor", f"{name}-predictor-worker-{i}", "worker",
                                   copy.deepcopy(worker_c), copy.deepcopy(worker_pod),
                                   {**env, "HEAD_SVC": head_svc}, sources))
    return plans


def plan_explainer(isvc: Manifest) -> list[ContainerPlan]:
    """The explainer's container with the arguments KServe's controller appends to a custom
    explainer: ``--model_name`` and ``--predictor_host`` unless present, and ``--http_port``."""
    meta = isvc.doc["metadata"]
    expl = isvc.doc["spec"].get("explainer")
    if not expl:
        return []
    if not expl.get("containers"):
        raise ManifestError("spec.explainer has no containers (only custom explainers are "
                            "supported)")
    container = copy.deepcopy(expl["containers"][0])
    container["name"] = "kserve-container"
    args = list(container.get("args", []))
    if not any(a.split("=")[0] == "--model_name" for a in args):
        args += ["--model_name", meta["name"]]
    if not any(a.split("=")[0] == "--predictor_host" for a in args):
        ns = meta.get("namespace", DEFAULT_NAMESPACE)
        args += ["--predictor_host", f"{meta['name']}-predictor.{ns}"]
    args += ["--http_port", "8080"]
    container["args"] = args
    pod = _pod_fields(expl, exclude=("containers",))
    return [ContainerPlan("explainer", f"{meta['name']}-explainer", "main", container, pod,
                          sources=[isvc.text])]


def plan(isvc: Manifest, runtimes: Sequence[Manifest],
         components: Sequence[str] = ("predictor", "explainer")) -> list[ContainerPlan]:
    """Every container of the chosen components, predictor first, with the labels KServe puts
    on their pods (which NetworkPolicies select)."""
    plans: list[ContainerPlan] = []
    if "predictor" in components:
        plans += plan_predictor(isvc, select_runtime(isvc.doc, runtimes))
    if "explainer" in components:
        plans += plan_explainer(isvc)
    for p in plans:
        p.labels = {"serving.kserve.io/inferenceservice": isvc.doc["metadata"]["name"],
                    "component": p.component}
        p.secrets = secrets_in(p.sources)
    return plans
