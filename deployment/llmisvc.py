"""What KServe's controller would run for an LLMInferenceService (serving.kserve.io/v1alpha2).

Why: an LLMInferenceService's pods do not run a ServingRuntime's command; they run KServe's
template (``deployment/data/config-llm-template.yaml``, a copy of KServe's default
``kserve-config-llm-template``): ``/bin/bash -c <script> -- <args>``, whose script ends in
``exec vllm serve /mnt/models --served-model-name NAME publishers/NS/models/NAME --port 8000
[--ssl-* with TLS] $VLLM_ADDITIONAL_ARGS $@``. An image is a drop-in there only if that exact
command works in it. This module reproduces the controller's steps for the fields the examples
use, so the local runner can run that command for real:

- the template's ``spec`` merged with the service's ``spec`` (Kubernetes strategic merge:
  containers, env, volumes by name; nested objects field by field; other lists replaced), then
  with any ``LLMInferenceServiceConfig`` the service names in ``baseRefs``;
- the template's Go-template actions rendered for the expressions the default template uses
  (``.Spec.Model.Name``, ``.ObjectMeta.Namespace``, ``if .GlobalConfig.EnableTLS`` with TLS
  on, ``and``, ``shutdownTimeout``, ``kvTransferConfig``, ``ChildName``); any other action is
  refused, so a template this code cannot render fails loudly rather than running wrongly;
- ``spec.model.lora.adapters`` turned into the arguments KServe's controller puts before the
  container's own (``--enable-lora [--max-lora-rank=N] [--max-loras=N] [--max-cpu-loras=N]
  --lora-modules '{"name":...,"path":"/mnt/lora/<name>"}' ...``, each adapter under its name and
  under ``publishers/<ns>/models/<name>``), read from kserve/kserve
  pkg/controller/v1alpha2/llmisvc/workload_lora.go (``addLoRAVLLMArgs``);
- the storage locations: ``spec.model.uri`` at /mnt/models, each adapter at /mnt/lora/<name>.

It neither starts processes nor talks to a cluster; ``deployment.local`` runs the result.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import ipaddress
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from deployment.manifests import MODEL_MOUNT, ContainerPlan, Manifest, ManifestError, secrets_in

KIND = "LLMInferenceService"
CONFIG_KIND = "LLMInferenceServiceConfig"
DATA = Path(__file__).parent / "data"
DEFAULT_TEMPLATE = DATA / "config-llm-template.yaml"
# The runtime's `vllm` command (docker/bin/vllm in the image: /opt/runtime/bin, first on PATH).
SHIM_DIR = Path(__file__).resolve().parents[1] / "docker" / "bin"
LORA_MOUNT_ROOT = "/mnt/lora"  # the controller's loraAdaptersMountRoot
TLS_MOUNT = "/var/run/kserve/tls"
MAIN = "main"
_ACTION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.S)
_TOKEN = re.compile(r'`[^`]*`|"[^"]*"|\S+')


# ----- strategic merge -----------------------------------------------------------------------
_MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
               "volumeMounts": "mountPath", "ports": "containerPort"}


def strategic_merge(base: Any, over: Any, key: str | None = None) -> Any:
    """``over`` merged into ``base`` as Kubernetes' strategic merge patch merges a PodSpec:
    lists of containers, env, volumes (by name), volume mounts (by path) and ports (by number)
    item by item; objects field by field; any other value (``args``, ``command``) replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for k, v in over.items():
            out[k] = strategic_merge(out[k], v, k) if k in out else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(over, list) and key in _MERGE_KEYS:
        field = _MERGE_KEYS[key]
        merged = {item[field]: copy.deepcopy(item) for item in base}
        for item in over:
            name = item[field]
            merged[name] = strategic_merge(merged[name], item) if name in merged \
                else copy.deepcopy(item)
        return list(merged.values())
    return copy.deepcopy(over)


# ----- Go templates (the subset KServe's default template uses) ------------------------------
def child_name(parent: str, suffix: str) -> str:
    """knative.dev/pkg/kmeta.ChildName: ``parent + suffix``, the parent shortened and hashed
    when the result would exceed 63 characters (a Kubernetes name)."""
    longest, md5_len = 63, 32
    if len(parent) + len(suffix) <= longest:
        return parent + suffix
    head = longest - len(suffix) - md5_len
    if head <= 0:
        return hashlib.md5((parent + suffix).encode()).hexdigest()  # noqa: S324 (a name)
    return parent[:head] + hashlib.md5(parent.encode()).hexdigest() + suffix  # noqa: S324


def _field(ctx: dict[str, Any], path: str) -> Any:
    value: Any = ctx
    for name in path.strip(".").split("."):
        if not isinstance(value, dict):
            return None
        keys = (name, name[:1].lower() + name[1:], {"ObjectMeta": "metadata",
                                                     "KVCacheOffloading": "kvCacheOffloading"
                                                     }.get(name, name))
        value = next((value[k] for k in keys if k in value), None)
    return value


def _funcs() -> dict[str, Any]:
    def shutdown_timeout(template: Any, default: Any) -> int:
        # KServe may derive it from the pod template; the local runner passes the default.
        return int(default)

    def kv_transfer_config(offloading: Any) -> str:
        if offloading:
            raise ManifestError("spec.kvCacheOffloading is not reproduced by the local runner")
        return ""

    return {"shutdownTimeout": shutdown_timeout, "kvTransferConfig": kv_transfer_config,
            "ChildName": child_name}


def _evaluate(expr: str, ctx: dict[str, Any]) -> Any:
    tokens = _TOKEN.findall(expr)

    def arg(tok: str) -> Any:
        if tok.startswith("."):
            return _field(ctx, tok)
        if tok[0] in "`\"":
            return tok[1:-1]
        if tok.isdigit():
            return int(tok)
        raise ManifestError(f"template action {{{{ {expr} }}}}: cannot evaluate {tok!r}")

    if len(tokens) == 1:
        return arg(tokens[0])
    if tokens[0] == "and":
        value: Any = True
        for tok in tokens[1:]:  # short-circuits, as Go's `and` does
            value = arg(tok)
            if not value:
                return value
        return value
    funcs = _funcs()
    if tokens[0] in funcs:
        return funcs[tokens[0]](*map(arg, tokens[1:]))
    raise ManifestError(f"template action {{{{ {expr} }}}} is not reproduced by the local runner")


def render(text: str, ctx: dict[str, Any]) -> str:
    """Render Go-template actions in ``text``: fields, ``if``/``else``/``end`` (nestable),
    ``and`` and the template functions above, with ``{{-`` / ``-}}`` whitespace trimming."""
    parts: list[str | tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(text):
        chunk = text[pos:m.start()]
        parts.append(chunk.rstrip() if m.group(1) else chunk)
        parts.append(("trim" if m.group(3) else "", m.group(2).strip()))
        pos = m.end()
    parts.append(text[pos:])
    out: list[str] = []
    stack: list[bool] = []  # one entry per open `if`: is its current branch emitted?
    trim_next = False
    for part in parts:
        if isinstance(part, str):
            if trim_next:
                part = part.lstrip()
            if all(stack):
                out.append(part)
            trim_next = False
            continue
        trim, expr = part
        trim_next = bool(trim)
        if expr.startswith("if "):
            stack.append(all(stack) and bool(_evaluate(expr[3:], ctx)))
        elif expr == "else":
            if not stack:
                raise ManifestError("template: {{else}} without {{if}}")
            parent = all(stack[:-1])
            stack[-1] = parent and not stack[-1]
        elif expr == "end":
            if not stack:
                raise ManifestError("template: {{end}} without {{if}}")
            stack.pop()
        elif all(stack):
            value = _evaluate(expr, ctx)
            if value is None:
                raise ManifestError(f"template action {{{{ {expr} }}}} has no value")
            out.append(str(value))
    if stack:
        raise ManifestError("template: {{if}} without {{end}}")
    return "".join(out)


def render_all(value: Any, ctx: dict[str, Any]) -> Any:
    """``render`` applied to every string of a parsed manifest."""
    if isinstance(value, str):
        return render(value, ctx) if "{{" in value else value
    if isinstance(value, list):
        return [render_all(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: render_all(v, ctx) for k, v in value.items()}
    return value


# ----- the controller's steps ----------------------------------------------------------------
def default_template() -> Manifest:
    """KServe's default ``kserve-config-llm-template`` (the copy shipped in deployment/data)."""
    text = DEFAULT_TEMPLATE.read_text()
    return Manifest(doc=yaml.safe_load(text), text=text, path=str(DEFAULT_TEMPLATE))


def find_llmisvc(manifests: Sequence[Manifest], name: str | None = None) -> Manifest | None:
    """The LLMInferenceService to run (the only one, or the one called ``name``), or None if
    the manifests hold none."""
    found = [m for m in manifests if m.doc.get("kind") == KIND
             and (name is None or m.doc["metadata"]["name"] == name)]
    if not found:
        return None
    if len(found) > 1:
        raise ManifestError(f"several LLMInferenceServices: "
                            f"{[m.doc['metadata']['name'] for m in found]}; pick one with --name")
    return found[0]


def _sanitize(name: str) -> str:
    out = re.sub(r"[^a-zA-Z0-9._-]", "-", name)
    return "adapter" if out in ("", ".", "..") else out


def lora_adapters(spec: dict[str, Any], base_name: str) -> list[dict[str, str]]:
    """``spec.model.lora.adapters`` checked as the controller checks them, sorted by name,
    each with its mount path (``/mnt/lora/<name>``)."""
    adapters = ((spec.get("model") or {}).get("lora") or {}).get("adapters") or []
    out = []
    for i, a in enumerate(sorted(adapters, key=lambda a: a.get("name") or "")):
        name, uri = a.get("name"), a.get("uri", "")
        if not name:
            raise ManifestError(f"LoRA adapter[{i}]: name is required")
        if name == base_name:
            raise ManifestError(f"LoRA adapter name {name!r} must differ from the base model's")
        scheme = uri.partition("://")[0] if "://" in uri else ""
        if scheme not in ("hf", "s3", "pvc"):
            raise ManifestError(f"LoRA adapter {name!r}: unsupported URI {uri!r} (supported: "
                                "hf://, s3://, pvc://)")
        out.append({"name": name, "uri": uri, "mountPath": f"{LORA_MOUNT_ROOT}/{_sanitize(name)}"})
    return out


def lora_args(spec: dict[str, Any], adapters: Sequence[dict[str, str]],
              namespace: str) -> list[str]:
    """The vLLM arguments the controller puts before the main container's own."""
    if not adapters:
        return []
    lora = spec["model"]["lora"]
    argv = ["--enable-lora"]
    for field, flag in (("maxRank", "--max-lora-rank"), ("maxAdapters", "--max-loras"),
                        ("maxCpuAdapters", "--max-cpu-loras")):
        if lora.get(field) is not None:
            argv.append(f"{flag}={lora[field]}")
    argv.append("--lora-modules")
    for a in adapters:
        for name in (a["name"], f"publishers/{namespace}/models/{a['name']}"):
            module = json.dumps({"name": name, "path": a["mountPath"]}, separators=(",", ":"))
            argv.append(f"'{module}'")  # single-quoted: the template's script runs `eval`
    return argv


def plan_llmisvc(svc: Manifest, configs: Sequence[Manifest] = (), *,
                 namespace: str = "default", tls: bool = True) -> list[ContainerPlan]:
    """The main workload container of an LLMInferenceService without prefill/decode split or
    worker (one pod), merged and rendered as KServe's controller does with TLS on."""
    meta = copy.deepcopy(svc.doc["metadata"])
    meta.setdefault("namespace", namespace)
    spec = svc.doc.get("spec") or {}
    for unsupported in ("prefill", "worker"):
        if spec.get(unsupported):
            raise ManifestError(f"spec.{unsupported} (several pods per replica) is not run by the "
                                "local runner")
    by_name = {m.doc["metadata"]["name"]: m for m in configs if m.doc.get("kind") == CONFIG_KIND}
    template = default_template()
    merged = copy.deepcopy(template.doc["spec"])
    sources = [template.text]
    for ref in spec.get("baseRefs") or []:
        if ref["name"] not in by_name:
            raise ManifestError(f"baseRefs names LLMInferenceServiceConfig {ref['name']!r}; give "
                                "its file with --llm-config")
        merged = strategic_merge(merged, by_name[ref["name"]].doc.get("spec") or {})
        sources.append(by_name[ref["name"]].text)
    merged = strategic_merge(merged, {k: v for k, v in spec.items() if k != "baseRefs"})
    merged.setdefault("model", {}).setdefault("name", meta["name"])
    if not merged["model"].get("uri"):
        raise ManifestError("spec.model.uri is required")
    ctx = {"Spec": merged, "ObjectMeta": meta, "GlobalConfig": {"EnableTLS": tls}}
    pod = render_all(merged.get("template") or {}, ctx)
    mains = [c for c in pod.get("containers", []) if c["name"] == MAIN]
    if not mains:
        raise ManifestError("spec.template has no container named 'main'")
    container = mains[0]
    adapters = lora_adapters(merged, merged["model"]["name"])
    container["args"] = lora_args(merged, adapters, meta["namespace"]) + container.get("args", [])
    storage = [{"uri": merged["model"]["uri"], "mountPath": MODEL_MOUNT}]
    storage += [{"uri": a["uri"], "mountPath": a["mountPath"]} for a in adapters]
    pod_fields = {k: v for k, v in pod.items() if k != "containers"}
    image_path = os.pathsep.join([str(SHIM_DIR), str(Path(sys.executable).parent),
                                  os.environ.get("PATH", "")])
    plan = ContainerPlan("workload", f"{meta['name']}-kserve", "main", container, pod_fields,
                         sources=[*sources, svc.text], storage=storage,
                         image_env={"PATH": image_path},
                         secrets=secrets_in([*sources, svc.text]))
    plan.labels = {"app.kubernetes.io/name": meta["name"],
                   "app.kubernetes.io/component": "llminferenceservice-workload"}
    return [plan]


def tls_secret_name(svc: Manifest) -> str:
    """The Secret the controller creates with the workload's serving certificate."""
    return child_name(svc.doc["metadata"]["name"], "-kserve-self-signed-certs")


def write_self_signed_tls(folder: str | Path, stem: str = "tls") -> Path:
    """A self-signed certificate for 127.0.0.1 / localhost as the Secret's ``tls.crt`` and
    ``tls.key`` in ``folder`` (what KServe's self-signed Secret holds; ``stem`` names other
    files); the certificate is its own CA, so clients verify against it. Returns the folder."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    (out / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"{stem}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    (out / f"{stem}.key").chmod(0o600)
    return out
