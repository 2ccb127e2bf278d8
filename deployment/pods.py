"""The Pod documents KServe would create for an InferenceService's containers.

Why: policy scanners (checkov) know no KServe kinds and pass a ServingRuntime or an
InferenceService without running a single check. Wrapped in a Pod, the same containers, with the
pod-level fields of their component and the runtime's volumes, get the Kubernetes checks. The
``checkov:skip=ID:reason`` comments written next to the manifest lines they justify become the
Pod annotations checkov reads for Kubernetes (``checkov.io/skipN: ID=reason``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

from deployment.manifests import ContainerPlan

_SKIP = re.compile(r"checkov:skip=([A-Z0-9_]+):([^\n]*)")


def skip_justifications(texts: Sequence[str]) -> dict[str, str]:
    """``{check id: reason}`` for every ``checkov:skip=ID:reason`` comment in the texts."""
    found: dict[str, str] = {}
    for text in texts:
        for check, reason in _SKIP.findall(text):
            found.setdefault(check, reason.strip().replace("=", "-"))
    return found


def pod_document(plan: ContainerPlan, namespace: str | None = None) -> dict[str, Any]:
    """One Pod with the planned container, its pod-level fields and skip annotations."""
    container = copy.deepcopy(plan.container)
    if plan.injected_env:
        names = {v["name"] for v in container.get("env", [])}
        container.setdefault("env", []).extend(
            {"name": k, "value": v} for k, v in plan.injected_env.items() if k not in names)
    annotations = {f"checkov.io/skip{i}": f"{check}={reason}" for i, (check, reason)
                   in enumerate(sorted(skip_justifications(plan.sources).items()), start=1)}
    metadata: dict[str, Any] = {
        "name": plan.pod_name,
        "labels": {**plan.labels, "role": plan.role},
        "annotations": annotations,
    }
    if namespace:
        metadata["namespace"] = namespace
    spec = {k: copy.deepcopy(v) for k, v in plan.pod.items()
            if k not in ("containers", "annotations", "labels")}
    spec["containers"] = [container]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def pod_documents(plans: Sequence[ContainerPlan], namespace: str | None = None) -> list[dict]:
    """A Pod per planned container (one per head, worker, predictor or explainer pod)."""
    return [pod_document(p, namespace) for p in plans]
