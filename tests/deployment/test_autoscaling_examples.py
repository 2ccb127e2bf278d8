"""The autoscaling examples (docs/autoscaling.md): an InferenceService that KServe scales with
KEDA on Prometheus queries, and an LLMInferenceService with ``spec.scaling``.

What a cluster would check and a schema does not, checked here without one:

- the CRD's openAPIV3Schema, strictly (as test_manifests.py and test_llmisvc.py validate every
  example), and the CRD's CEL rules (``x-kubernetes-validations``) on ``scaling``, which
  jsonschema ignores: reproduced here, and compared with the CRD's rule text so a new rule in
  the CRD cannot pass unnoticed;
- KServe's admission webhook for KEDA metrics (``validateScalingKedaCompExtension`` in
  pkg/apis/serving/v1beta1/inference_service_validation.go at the reference commit aaac4e29):
  an External metric needs a query and ``target.value`` (the trigger's threshold: KServe's KEDA
  reconciler reads ``value`` only);
- that every series a query names is one the runtime serves, with the label it carries:
  the runtime's own gauges (runtime/admission.py, runtime/metrics.py) by their collectors,
  vLLM 0.32's by its metric definitions (vllm/v1/metrics/loggers.py), and the label value is
  the name the model is served under.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import REGISTRY

import runtime.admission  # noqa: F401  (registers the runtime's gauges)
import runtime.metrics  # noqa: F401  (registers the runtime's counters and histograms)
from tests.deployment.conftest import DATA, EXAMPLES_DIR, REPO, crd_schemas
from tests.deployment.test_manifests import strict

ISVC_FILE = EXAMPLES_DIR / "smollm2-autoscaling-cpu.yaml"
LLMISVC_FILE = REPO / "llmisvc" / "smollm2-scaling-cpu.yaml"
VLLM_LOGGERS = Path(importlib.util.find_spec("vllm").submodule_search_locations[0]) / \
    "v1" / "metrics" / "loggers.py"
SERIES = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
FUNCTIONS = {"sum", "avg", "max", "min", "vector", "or", "rate", "increase", "by"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(path: Path, kind: str) -> dict[str, Any]:
    [doc] = [d for d in _docs(path) if d["kind"] == kind]
    return doc


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft7Validator]:
    schemas = {**crd_schemas(),
               **json.loads((DATA / "kserve-llmisvc-crd-schemas.json").read_text())["schemas"]}
    return {key: jsonschema.Draft7Validator(strict(s)) for key, s in schemas.items()}


def _schema_errors(validators: dict[str, jsonschema.Draft7Validator], doc: dict) -> list[str]:
    v = validators[f"{doc['apiVersion']}/{doc['kind']}"]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
            for e in v.iter_errors(doc)]


# ----- the rules a schema does not carry -----------------------------------------------------
def kserve_keda_errors(isvc: dict[str, Any]) -> list[str]:
    """KServe's webhook on a KEDA-scaled component (Standard mode, autoscalerClass keda), as in
    validateScalingKedaCompExtension and validateScaleTarget, for every component."""
    errors = []
    ann = isvc["metadata"].get("annotations", {})
    for name in ("predictor", "transformer", "explainer"):
        comp = isvc["spec"].get(name)
        if not comp or "autoScaling" not in comp:
            continue
        if ann.get("serving.kserve.io/deploymentMode") not in ("Standard", "RawDeployment") \
                or ann.get("serving.kserve.io/autoscalerClass") != "keda":
            errors.append(f"{name}: autoScaling metrics need Standard mode and autoscalerClass "
                          "keda")
        if "scaleMetric" in comp:
            errors.append(f"{name}: ScaleMetric is not supported for KEDA")
        if comp.get("minReplicas", 1) > comp.get("maxReplicas", comp.get("minReplicas", 1)):
            errors.append(f"{name}: minReplicas > maxReplicas")
        for i, metric in enumerate(comp["autoScaling"].get("metrics", [])):
            if metric["type"] != "External":
                continue  # Resource and PodMetric: not used by these examples
            ext = metric.get("external") or {}
            target = ext.get("target", {})
            if not ext.get("metric", {}).get("query"):
                errors.append(f"{name}/metrics/{i}: the query should not be empty")
            if target.get("value") is None:
                errors.append(f"{name}/metrics/{i}: the target threshold value should not be "
                              "empty")
            needs = {"Utilization": "averageUtilization", "AverageValue": "averageValue",
                     "Value": "value"}.get(target.get("type", ""))
            if needs and target.get(needs) is None:
                errors.append(f"{name}/metrics/{i}: the {target['type']} type should be set")
    return errors


# The CEL rules of LLMInferenceService v1alpha2 on a workload and its `scaling`, by rule text:
# the function is what the API server would evaluate.
SCALING_RULES: dict[str, Any] = {
    "!(has(self.replicas) && has(self.scaling))":
        lambda spec, s: not ("replicas" in spec and s is not None),
    "has(self.wva) || has(self.keda)": lambda spec, s: "wva" in s or "keda" in s,
    "!(has(self.wva) && has(self.keda))": lambda spec, s: not ("wva" in s and "keda" in s),
    "!has(self.keda) || size(self.keda.triggers) > 0":
        lambda spec, s: "keda" not in s or len(s["keda"].get("triggers", [])) > 0,
    "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas":
        lambda spec, s: "minReplicas" not in s or s["minReplicas"] <= s["maxReplicas"],
    "!has(self.keda) || !has(self.keda.idleReplicaCount) || has(self.minReplicas)":
        lambda spec, s: "idleReplicaCount" not in s.get("keda", {}) or "minReplicas" in s,
    "!has(self.keda) || !has(self.keda.idleReplicaCount) || !has(self.minReplicas) || "
    "self.keda.idleReplicaCount < self.minReplicas":
        lambda spec, s: ("idleReplicaCount" not in s.get("keda", {}) or "minReplicas" not in s
                         or s["keda"]["idleReplicaCount"] < s["minReplicas"]),
    "!has(self.advanced) || !has(self.advanced.horizontalPodAutoscalerConfig) || "
    "size(self.advanced.horizontalPodAutoscalerConfig.name) == 0":
        lambda spec, s: not s.get("keda", {}).get("advanced", {}).get(
            "horizontalPodAutoscalerConfig", {}).get("name"),
}


def _cel_rules(schema: Any) -> set[str]:
    """Every CEL rule of a schema subtree."""
    found: set[str] = set()
    if isinstance(schema, dict):
        found |= {r["rule"] for r in schema.get("x-kubernetes-validations", [])}
        for v in schema.values():
            found |= _cel_rules(v)
    elif isinstance(schema, list):
        for v in schema:
            found |= _cel_rules(v)
    return found


def scaling_errors(llmisvc: dict[str, Any]) -> list[str]:
    spec = llmisvc["spec"]
    s = spec.get("scaling")
    if s is None:
        return []
    return [rule for rule, holds in SCALING_RULES.items() if not holds(spec, s)]


# ----- the series the runtime serves ---------------------------------------------------------
def runtime_series() -> dict[str, set[str]]:
    """Series name -> label names, of the runtime's own collectors (gauges as themselves,
    counters as ``_total``)."""
    out = {}
    for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001
        name = getattr(collector, "_name", "")
        if name.startswith("kserve_llm_"):
            kind = getattr(collector, "_type", "")
            out[name + ("_total" if kind == "counter" else "")] = set(collector._labelnames)
    return out


def vllm_series() -> dict[str, set[str]]:
    """Series name -> label names, of vLLM 0.32's engine gauges and counters, read from its
    metric definitions: those created with the per-engine ``labelnames`` carry
    ``model_name`` (the served model name) and ``engine``."""
    text = VLLM_LOGGERS.read_text()
    out = {}
    for m in re.finditer(r'name="(vllm:[a-z_]+)",(.*?)\)\n', text, re.S):
        labels = re.search(r"labelnames=([^\n]*)", m.group(2))
        if labels and labels.group(1).strip().rstrip(",") == "labelnames":
            out[m.group(1)] = {"model_name", "engine"}
        else:
            out[m.group(1)] = set()  # other labels: not used by these examples
    return out


def selectors(query: str) -> list[tuple[str, dict[str, str]]]:
    """(series name, {label: value}) of every ``name{...}`` selector in a PromQL query."""
    found = [(n, dict(re.findall(r'(\w+)="([^"]*)"', labels)))
             for n, labels in SERIES.findall(query)]
    bare = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", SERIES.sub(" ", query))) - FUNCTIONS
    assert not bare, f"series without a label selector, or unknown words: {bare}"
    return found


def isvc_queries(isvc: dict[str, Any]) -> list[str]:
    return [m["external"]["metric"]["query"]
            for m in isvc["spec"]["predictor"]["autoScaling"]["metrics"]
            if m["type"] == "External"]


def llmisvc_queries(llmisvc: dict[str, Any]) -> list[str]:
    return [t["metadata"]["query"] for t in llmisvc["spec"]["scaling"]["keda"]["triggers"]
            if t["type"] == "prometheus"]


def unserved(queries: list[str], served_name: str) -> list[str]:
    """Why a query would find nothing on this runtime: a series it does not serve, a label it
    does not carry, or a model label other than the served name."""
    known = {**vllm_series(), **runtime_series()}
    wrong = []
    for query in queries:
        for name, labels in selectors(query):
            if name not in known:
                wrong.append(f"{name}: not served")
                continue
            model_label = "model_name" if name.startswith("vllm:") else "model"
            if not set(labels) <= known[name]:
                wrong.append(f"{name}: labels {sorted(set(labels) - known[name])} not carried")
            if labels.get(model_label) != served_name:
                wrong.append(f"{name}: {model_label}={labels.get(model_label)!r}, served as "
                             f"{served_name!r}")
    return wrong


# ----- the tests -----------------------------------------------------------------------------
def test_the_examples_are_there_and_of_the_kinds_they_document() -> None:
    assert [d["kind"] for d in _docs(ISVC_FILE)] == ["Secret", "InferenceService",
                                                     "NetworkPolicy"]
    assert [d["kind"] for d in _docs(LLMISVC_FILE)] == ["Secret", "LLMInferenceService",
                                                        "NetworkPolicy"]


@pytest.mark.parametrize("path,kind", [(ISVC_FILE, "InferenceService"),
                                       (LLMISVC_FILE, "LLMInferenceService")],
                         ids=["isvc", "llmisvc"])
def test_each_matches_its_crd_schema_strictly(path: Path, kind: str, validators) -> None:
    assert _schema_errors(validators, _one(path, kind)) == []


def test_isvc_passes_kserves_keda_webhook_rules_and_scales_on_llm_signals() -> None:
    isvc = _one(ISVC_FILE, "InferenceService")
    assert kserve_keda_errors(isvc) == []
    pred = isvc["spec"]["predictor"]
    assert 1 <= pred["minReplicas"] < pred["maxReplicas"]
    names = {n for q in isvc_queries(isvc) for n, _ in selectors(q)}
    assert names == {"vllm:num_requests_waiting", "kserve_llm_requests_admitted_waiting",
                     "vllm:kv_cache_usage_perc"}, names
    # queries KServe cannot turn into triggers are none: every metric is an External one
    assert len(isvc_queries(isvc)) == len(pred["autoScaling"]["metrics"]) == 2


def test_llmisvc_passes_the_crds_cel_rules_and_scales_on_llm_signals() -> None:
    llm = _one(LLMISVC_FILE, "LLMInferenceService")
    assert scaling_errors(llm) == []
    assert "replicas" not in llm["spec"] and "wva" not in llm["spec"]["scaling"]
    triggers = llm["spec"]["scaling"]["keda"]["triggers"]
    assert {t["type"] for t in triggers} == {"prometheus"}
    for t in triggers:  # KEDA's prometheus scaler: an address, a query, a threshold
        assert {"serverAddress", "query", "threshold"} <= set(t["metadata"]), t
        assert float(t["metadata"]["threshold"]) > 0
        # fallback (scaling.keda.fallback) is only honoured for AverageValue triggers
        assert t.get("metricType", "AverageValue") == "AverageValue", t
    names = {n for q in llmisvc_queries(llm) for n, _ in selectors(q)}
    assert names == {"vllm:num_requests_waiting", "kserve_llm_requests_admitted_waiting",
                     "vllm:kv_cache_usage_perc"}, names


def test_the_cel_rules_reproduced_are_the_crds_rules_on_direct_keda_scaling() -> None:
    """All the CRD's rules on a workload's `scaling` but those of `wva` (not used here)."""
    schemas = json.loads((DATA / "kserve-llmisvc-crd-schemas.json").read_text())["schemas"]
    spec = schemas["serving.kserve.io/v1alpha2/LLMInferenceService"]["properties"]["spec"]
    scaling = spec["properties"]["scaling"]
    crd = ({r["rule"] for r in spec.get("x-kubernetes-validations", [])}
           | _cel_rules(scaling["properties"]["keda"])
           | {r["rule"] for r in scaling["x-kubernetes-validations"]
              if "self.wva." not in r["rule"]})
    assert crd == set(SCALING_RULES)


@pytest.mark.parametrize("path,kind,queries", [
    (ISVC_FILE, "InferenceService", isvc_queries),
    (LLMISVC_FILE, "LLMInferenceService", llmisvc_queries)], ids=["isvc", "llmisvc"])
def test_every_query_names_series_the_runtime_serves_under_the_served_name(
        path: Path, kind: str, queries) -> None:
    doc = _one(path, kind)
    served = (doc["spec"].get("model", {}).get("name") if kind == "LLMInferenceService"
              else None) or doc["metadata"]["name"]
    assert unserved(queries(doc), served) == []


def test_the_series_tables_are_read_from_the_code() -> None:
    vllm = vllm_series()
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running",
                 "vllm:kv_cache_usage_perc"):
        assert vllm[name] == {"model_name", "engine"}, name
    assert vllm["vllm:lora_requests_info"] == set()  # its own labels, no model_name
    ours = runtime_series()
    for name in ("kserve_llm_requests_in_flight", "kserve_llm_engine_requests_in_flight",
                 "kserve_llm_requests_admitted_waiting"):
        assert ours[name] == {"model"}, name
    assert ours["kserve_llm_requests_total"] == {"model", "protocol", "outcome"}


def test_the_checks_catch_what_a_cluster_would_reject() -> None:
    isvc = copy.deepcopy(_one(ISVC_FILE, "InferenceService"))
    metric = isvc["spec"]["predictor"]["autoScaling"]["metrics"][0]["external"]
    metric["target"] = {"type": "AverageValue", "averageValue": "2"}  # no `value`
    assert any("threshold value should not be empty" in e for e in kserve_keda_errors(isvc))
    metric["metric"]["query"] = 'sum(vllm:num_requests_waitin{model_name="smollm2-autoscaling"})'
    assert unserved([metric["metric"]["query"]], "smollm2-autoscaling") == [
        "vllm:num_requests_waitin: not served"]
    assert unserved(['sum(vllm:num_requests_waiting{model_name="smollm2"})'],
                    "smollm2-autoscaling") == [
        "vllm:num_requests_waiting: model_name='smollm2', served as 'smollm2-autoscaling'"]
    assert unserved(['sum(kserve_llm_requests_admitted_waiting{model="m",pod="x"})'], "m") == [
        "kserve_llm_requests_admitted_waiting: labels ['pod'] not carried"]
    llm = copy.deepcopy(_one(LLMISVC_FILE, "LLMInferenceService"))
    llm["spec"]["replicas"] = 2
    llm["spec"]["scaling"]["minReplicas"] = 5
    llm["spec"]["scaling"]["keda"]["triggers"] = []
    assert len(scaling_errors(llm)) == 3, scaling_errors(llm)


@pytest.mark.parametrize("path", sorted(EXAMPLES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_passes_kserves_keda_rules(path: Path) -> None:
    """Every example InferenceService that scales with KEDA would pass KServe's webhook
    (`target.value` required; `averageValue` alone was refused) and queries served series."""
    for doc in _docs(path):
        if doc.get("kind") != "InferenceService" or "autoScaling" not in doc["spec"].get(
                "predictor", {}):
            continue
        assert kserve_keda_errors(doc) == [], path.name
