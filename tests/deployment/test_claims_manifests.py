"""README claims about the example InferenceServices that the files alone can prove (fast tier).

"Serverless (Knative), CPU, scale to zero, explainer" and "For GPUs: `runtime: kserve-vllm-gpu`,
`nvidia.com/gpu` in requests/limits and a toleration, no `VLLM_CPU_KVCACHE_SPACE` (the KV cache
follows `--gpu-memory-utilization`), a larger `/dev/shm`, `--tensor-parallel-size=N` for N GPUs,
and vLLM's default dtype" (details in docs/deployment.md, "Mode 2" and "What to change for
GPUs"). Containers are read as KServe would run them: ``deployment.manifests.plan`` merges the
InferenceService into the runtime it selects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from deployment.manifests import ContainerPlan, deployment_mode, plan, select_runtime
from tests.deployment.conftest import example, runtimes

KNATIVE = "smollm2-knative-cpu"
GPU = "qwen-standard-gpu"
SCALE_TO_ZERO_BLOCKERS = ("autoscaling.knative.dev/min-scale", "autoscaling.knative.dev/minScale")
KPA = "kpa.autoscaling.knative.dev"

_UNITS = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
          "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity(text: str) -> int:
    """A Kubernetes memory quantity in bytes ("8Gi" -> 8 * 2**30)."""
    m = re.fullmatch(r"(\d+)([KMGT]i?|k)?", str(text))
    assert m, f"unexpected quantity {text!r}"
    return int(m.group(1)) * _UNITS[m.group(2) or ""]


def seconds(text: str) -> int:
    """A Go duration of whole units ("20m", "1h30m", "90s") in seconds."""
    parts = re.findall(r"(\d+)([hms])", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"unexpected duration {text!r}"
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def annotations(isvc: dict[str, Any], component: str) -> dict[str, str]:
    """What Knative sees for one component: the InferenceService's and the component's own."""
    return {**isvc["metadata"].get("annotations", {}),
            **isvc["spec"][component].get("annotations", {})}


def gpu_predictor() -> ContainerPlan:
    [p] = plan(example(GPU), runtimes(), ["predictor"])
    return p


def env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def test_knative_example_scales_every_component_to_zero() -> None:
    """README: "Serverless (Knative), CPU, scale to zero, explainer"."""
    isvc = example(KNATIVE).doc
    assert deployment_mode(isvc) == "Knative"
    assert "serving.kserve.io/autoscalerClass" not in isvc["metadata"].get("annotations", {})
    for component in ("predictor", "explainer"):
        spec, notes = isvc["spec"][component], annotations(isvc, component)
        assert spec["minReplicas"] == 0, component  # KServe's default would be 1
        assert spec["maxReplicas"] >= 1, component
        for key in SCALE_TO_ZERO_BLOCKERS:
            assert notes.get(key, "0") == "0", f"{component}: {key} keeps a pod up"
        # Knative's HPA class cannot scale to zero; only its own autoscaler (KPA) can
        assert notes.get("autoscaling.knative.dev/class", KPA) == KPA, component
        assert int(notes.get("autoscaling.knative.dev/initial-scale", "1")) >= 1, component


def test_knative_example_keeps_idle_pods_ten_minutes_and_outlasts_slow_starts() -> None:
    """docs/deployment.md Mode 2: the pod is kept 10 minutes after the last request, and the
    progress deadline exceeds the startup probe's budget (a slow first load is not failed)."""
    isvc = example(KNATIVE)
    for p in plan(isvc, runtimes()):
        notes = annotations(isvc.doc, p.component)
        retention = notes["autoscaling.knative.dev/scale-to-zero-pod-retention-period"]
        assert seconds(retention) == 600, p.component
        probe = p.container["startupProbe"]
        budget = (probe.get("initialDelaySeconds", 0)
                  + probe["periodSeconds"] * probe["failureThreshold"])
        deadline = seconds(notes["serving.knative.dev/progress-deadline"])
        assert deadline > budget, f"{p.component}: progress deadline {deadline} s <= {budget} s"


def test_knative_example_autoscales_on_concurrency() -> None:
    """docs/deployment.md Mode 2: `containerConcurrency: 16` hard limit, `scaleMetric:
    concurrency` / `scaleTarget: 4`, `timeout: 600`."""
    pred = example(KNATIVE).doc["spec"]["predictor"]
    assert (pred["scaleMetric"], pred["scaleTarget"], pred["containerConcurrency"],
            pred["timeout"]) == ("concurrency", 4, 16, 600)
    assert pred["scaleTarget"] <= pred["containerConcurrency"]


def test_gpu_example_uses_the_gpu_runtime_and_requests_gpus() -> None:
    """README: GPUs use `runtime: kserve-vllm-gpu` with `nvidia.com/gpu` in requests and
    limits, not auto-selected."""
    isvc = example(GPU).doc
    assert isvc["spec"]["predictor"]["model"]["runtime"] == "kserve-vllm-gpu"
    rt = select_runtime(isvc, runtimes()).doc
    assert rt["metadata"]["name"] == "kserve-vllm-gpu"
    assert not any(f.get("autoSelect") for f in rt["spec"]["supportedModelFormats"])
    res = gpu_predictor().container["resources"]
    assert int(res["requests"]["nvidia.com/gpu"]) >= 1
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]


def test_gpu_example_tolerates_the_gpu_taint() -> None:
    """README: GPUs get "a toleration" (for the GPU nodes' `nvidia.com/gpu` taint)."""
    tolerations = gpu_predictor().pod.get("tolerations", [])
    assert any(t["key"] == "nvidia.com/gpu" and t.get("effect") == "NoSchedule"
               and (t.get("operator") == "Exists" or "value" in t) for t in tolerations), \
        tolerations


def test_gpu_example_sizes_the_kv_cache_by_gpu_memory_not_cpu_space() -> None:
    """README: no `VLLM_CPU_KVCACHE_SPACE` on GPUs; the KV cache follows
    `--gpu-memory-utilization`."""
    c = gpu_predictor().container
    assert "VLLM_CPU_KVCACHE_SPACE" not in env_names(c)
    assert any(a.startswith("--gpu-memory-utilization=") for a in c["args"]), c["args"]
    # the CPU runtimes do set it: the difference is deliberate
    cpu = [m for m in runtimes() if m.doc["metadata"]["name"] == "kserve-vllm-cpu"]
    assert "VLLM_CPU_KVCACHE_SPACE" in env_names(cpu[0].doc["spec"]["containers"][0])


def test_gpu_example_has_a_larger_dev_shm() -> None:
    """README: GPUs get "a larger `/dev/shm`" (docs: 8Gi, for NCCL)."""
    def shm(p: ContainerPlan) -> int:
        [mount] = [m for m in p.container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        [vol] = [v for v in p.pod["volumes"] if v["name"] == mount["name"]]
        assert vol["emptyDir"]["medium"] == "Memory"
        return quantity(vol["emptyDir"]["sizeLimit"])

    [cpu] = plan(example("smollm2-standard-cpu"), runtimes(), ["predictor"])
    assert shm(gpu_predictor()) == 8 * 2**30 > shm(cpu)


def test_gpu_example_gets_vllm_defaults_and_one_tp_rank_per_gpu(tmp_path: Path,
                                                                monkeypatch) -> None:
    """README: on GPUs vLLM's default dtype (the runtime's float32/eager defaults apply only on
    CPUs) and `--tensor-parallel-size=N` for N GPUs."""
    from runtime.cli import parse
    from runtime.engine import vllm_args

    p = gpu_predictor()
    # the container's command line, with /mnt/models mapped to a local folder
    argv = [a.replace("/mnt/models", str(tmp_path)) for a in p.container["args"]]
    assert not any(a.startswith(("--dtype", "--enforce-eager", "--enforce_eager"))
                   for a in argv), argv
    engine: dict[bool, Any] = {}
    for on_cpu in (True, False):
        monkeypatch.setattr(vllm_args.current_platform, "is_cpu", lambda c=on_cpu: c)
        engine[on_cpu] = vllm_args.parse_engine_args(parse(argv))
    assert (engine[True].dtype, engine[True].enforce_eager) == ("float32", True)  # CPU
    assert (engine[False].dtype, engine[False].enforce_eager) == ("auto", False)  # GPU
    gpus = int(p.container["resources"]["limits"]["nvidia.com/gpu"])
    assert engine[False].tensor_parallel_size == gpus
    assert engine[False].gpu_memory_utilization == pytest.approx(0.90)
