"""The LLMInferenceService manifests under llmisvc/ and the controller logic the local runner
reproduces for them (deployment/llmisvc.py), without starting an engine.

Schema: every document against the v1alpha2 openAPIV3Schema of its CRD, strictly (as
test_manifests.py validates InferenceServices); LoRA adapters, which the CRD leaves
unchecked (``x-kubernetes-preserve-unknown-fields``), against the schema of a model
(``LLMModelSpec``). Then the merge with KServe's default template, its Go-template actions,
the controller's LoRA arguments, and the template's real ``bash`` script run with a stand-in
``vllm`` that prints the command line it was given.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from deployment.llmisvc import (
    DEFAULT_TEMPLATE,
    SHIM_DIR,
    child_name,
    find_llmisvc,
    plan_llmisvc,
    render,
    strategic_merge,
    write_self_signed_tls,
)
from deployment.local import LocalDeployment
from deployment.manifests import Manifest, ManifestError, load_manifests
from tests.deployment.conftest import DATA, REPO, RUNTIMES_DIR
from tests.deployment.test_manifests import OTHER_KINDS, check_core_document, strict

LLMISVC_DIR = REPO / "llmisvc"
LLMISVC_FILES = sorted(LLMISVC_DIR.glob("*.yaml"))
REFERENCE = REPO.parent / "shared" / "reference" / "kserve-llmisvc"
ADAPTERS = ("attn-a", "mlp-b")
BASE_URI = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
KEY_FILE = "/etc/kserve-vllm/api-key/key"  # the examples' inference key, a mounted Secret


def adapter_uri(name: str) -> str:
    return f"s3://example-models/smollm2-adapters/{name}"


def llm(name: str) -> Manifest:
    found = find_llmisvc(load_manifests([LLMISVC_DIR / f"{name}.yaml"]))
    assert found is not None
    return found


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft7Validator]:
    schemas = json.loads((DATA / "kserve-llmisvc-crd-schemas.json").read_text())["schemas"]
    out = {key: jsonschema.Draft7Validator(strict(s)) for key, s in schemas.items()}
    model = copy.deepcopy(schemas["serving.kserve.io/v1alpha2/LLMInferenceService"]
                          ["properties"]["spec"]["properties"]["model"])
    del model["properties"]["lora"]  # an adapter is an LLMModelSpec: uri, name
    out["adapter"] = jsonschema.Draft7Validator(strict(model))
    return out


def _errors(validators: dict[str, jsonschema.Draft7Validator], doc: dict) -> list[str]:
    v = validators[f"{doc['apiVersion']}/{doc['kind']}"]
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
              for e in v.iter_errors(doc)]
    lora = (((doc.get("spec") or {}).get("model") or {}).get("lora") or {})
    for i, adapter in enumerate(lora.get("adapters") or []):
        errors += [f"spec/model/lora/adapters/{i}/{'/'.join(map(str, e.absolute_path))}: "
                   f"{e.message[:200]}" for e in validators["adapter"].iter_errors(adapter)]
    return errors


# ----- the manifests ---------------------------------------------------------------------------
def test_the_examples_are_there() -> None:
    assert [p.name for p in LLMISVC_FILES] == ["smollm2-cpu.yaml", "smollm2-lora-cpu.yaml",
                                              "smollm2-scaling-cpu.yaml"]


@pytest.mark.parametrize("path", LLMISVC_FILES, ids=lambda p: p.name)
def test_every_document_matches_its_v1alpha2_crd_schema(path: Path, validators) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    assert [d["kind"] for d in docs] == ["Secret", "LLMInferenceService", "NetworkPolicy"]
    for doc in docs:
        if doc["kind"] in OTHER_KINDS:
            check_core_document(doc)
            continue
        assert doc["apiVersion"] == "serving.kserve.io/v1alpha2", path.name
        assert _errors(validators, doc) == [], f"{path.name} ({doc['kind']})"


def test_the_shipped_template_is_kserves_config_and_validates(validators) -> None:
    doc = yaml.safe_load(DEFAULT_TEMPLATE.read_text())
    assert doc["kind"] == "LLMInferenceServiceConfig"
    assert doc["metadata"]["name"] == "kserve-config-llm-template"
    assert _errors(validators, doc) == []
    text = DEFAULT_TEMPLATE.read_text()
    assert "commit aaac4e29" in text and "Apache License, Version 2.0" in text
    if (REFERENCE / "config-llm-template.yaml").is_file():  # the copy is unmodified
        body = "".join(text.splitlines(keepends=True)[9:])
        assert body == (REFERENCE / "config-llm-template.yaml").read_text()


def test_strict_validation_catches_typos_also_in_adapters(validators) -> None:
    doc = copy.deepcopy(llm("smollm2-lora-cpu").doc)
    doc["spec"]["template"]["containers"][0]["imagee"] = "x"
    doc["spec"]["model"]["lora"]["maxRanks"] = 8
    doc["spec"]["model"]["lora"]["adapters"][0]["uir"] = "s3://x"
    doc["spec"]["template"]["containers"][0]["resources"]["limits"]["memory"] = "6 GB"
    errors = _errors(validators, doc)
    for needle in ("imagee", "maxRanks", "adapters/0/: Additional properties are not allowed "
                   "('uir'", "resources/limits/memory"):
        assert any(needle in e for e in errors), (needle, errors)


def test_examples_use_the_runtimes_cpu_image() -> None:
    [cpu] = [m for m in load_manifests([RUNTIMES_DIR / "kserve-vllm-cpu.yaml"])
             if m.doc["kind"] == "ClusterServingRuntime"]
    image = cpu.doc["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/example-org/kserve-vllm-runtime:0.1.0-cpu"
    for path in LLMISVC_FILES:
        [p] = plan_llmisvc(llm(path.stem))
        assert p.container["image"] == image, path.name


# ----- the merge and the template ----------------------------------------------------------------
def test_plan_is_kserves_template_command_with_the_services_fields() -> None:
    [p] = plan_llmisvc(llm("smollm2-cpu"), namespace="test")
    c = p.container
    assert c["command"][:2] == ["/bin/bash", "-c"] and c["command"][3:] == ["--"]
    script = c["command"][2]
    assert "{{" not in yaml.safe_dump(c) + yaml.safe_dump(p.pod)
    assert ('exec vllm serve /mnt/models \\\n  --served-model-name "smollm2" '
            '"publishers/test/models/smollm2" \\\n  --port 8000') in script
    for flag in ("--enable-ssl-refresh", "--ssl-certfile /var/run/kserve/tls/tls.crt",
                 "--ssl-keyfile /var/run/kserve/tls/tls.key", "${VLLM_ADDITIONAL_ARGS}"):
        assert flag in script
    assert c["args"] == []  # no adapters: nothing after the template's `--`
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[kind]["httpGet"] == {"path": "/health", "port": 8000, "scheme": "HTTPS"}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {"HOME": "/home", "VLLM_LOGGING_LEVEL": "INFO", "HF_HUB_CACHE": "/models",
                   "VLLM_CPU_KVCACHE_SPACE": "2",
                   "VLLM_ADDITIONAL_ARGS": f"--max-model-len=2048 --api_key_file={KEY_FILE}"}
    assert c["resources"]["limits"] == {"cpu": "4", "memory": "6Gi"}
    assert c["securityContext"]["runAsNonRoot"] is True
    vols = {v["name"]: v for v in p.pod["volumes"]}
    assert vols["tls-certs"]["secret"]["secretName"] == "smollm2-kserve-self-signed-certs"
    assert p.storage == [{"uri": BASE_URI, "mountPath": "/mnt/models"}]
    assert p.image_env["PATH"].split(os.pathsep)[:2] == [str(SHIM_DIR),
                                                        str(Path(sys.executable).parent)]


def test_lora_adapters_become_the_controllers_arguments_and_mounts() -> None:
    [p] = plan_llmisvc(llm("smollm2-lora-cpu"))
    modules = [f"'{{\"name\":\"{n}\",\"path\":\"/mnt/lora/{a}\"}}'" for a in ADAPTERS
               for n in (a, f"publishers/default/models/{a}")]
    assert p.container["args"] == ["--enable-lora", "--max-lora-rank=8", "--max-loras=2",
                                   "--max-cpu-loras=4", "--lora-modules", *modules]
    assert p.storage == [{"uri": BASE_URI, "mountPath": "/mnt/models"},
                         *({"uri": adapter_uri(a), "mountPath": f"/mnt/lora/{a}"}
                           for a in ADAPTERS)]


def _variant(**spec: Any) -> Manifest:
    doc = copy.deepcopy(llm("smollm2-lora-cpu").doc)
    doc["spec"].update(spec)
    return Manifest(doc=doc, text="", path="x.yaml")


def test_lora_rules_of_the_controller() -> None:
    lora: dict[str, Any] = {"adapters": [{"name": "b", "uri": "pvc://c/b"},
                                         {"name": "a/x", "uri": "hf://o/a"}]}
    [p] = plan_llmisvc(_variant(model={"uri": BASE_URI, "name": "m", "lora": lora}))
    # sorted by name, path made safe, no --max-* flag unless the spec sets it (vLLM's defaults)
    assert p.container["args"][:2] == ["--enable-lora", "--lora-modules"]
    assert p.container["args"][2] == "'{\"name\":\"a/x\",\"path\":\"/mnt/lora/a-x\"}'"
    for bad, match in (({"name": "m", "uri": "hf://o/a"}, "must differ"),
                       ({"name": "z", "uri": "oci://o/a"}, "unsupported URI"),
                       ({"uri": "hf://o/a"}, "name is required")):
        lora = {"adapters": [bad]}
        with pytest.raises(ManifestError, match=match):
            plan_llmisvc(_variant(model={"uri": BASE_URI, "name": "m", "lora": lora}))


def test_strategic_merge_merges_by_name_and_field() -> None:
    base = {"containers": [{"name": "main", "image": "a", "args": ["x"],
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                            "livenessProbe": {"httpGet": {"path": "/health", "port": 8000},
                                              "periodSeconds": 10}}],
            "volumes": [{"name": "v", "emptyDir": {}}]}
    over = {"containers": [{"name": "main", "image": "b", "args": ["y"],
                            "env": [{"name": "B", "value": "3"}],
                            "livenessProbe": {"periodSeconds": 30}},
                           {"name": "side", "image": "c"}]}
    out = strategic_merge(base, over)
    main, side = out["containers"]
    assert main["image"] == "b" and main["args"] == ["y"] and side["name"] == "side"
    assert main["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]
    assert main["livenessProbe"] == {"httpGet": {"path": "/health", "port": 8000},
                                     "periodSeconds": 30}
    assert out["volumes"] == base["volumes"]


def test_render_follows_go_templates_for_the_actions_used() -> None:
    ctx: dict[str, Any] = {"Spec": {"model": {"name": "m"}, "parallelism": {"tensor": 2}},
                           "ObjectMeta": {"name": "svc", "namespace": "ns"},
                           "GlobalConfig": {"EnableTLS": False}}
    scheme = "{{ if .GlobalConfig.EnableTLS }}HTTPS{{else}}HTTP{{- end }}"
    assert render(scheme, ctx) == "HTTP"
    tp = "a \\\n  {{- if and .Spec.Parallelism .Spec.Parallelism.Tensor }} --tp {{ " \
         ".Spec.Parallelism.Tensor }}{{- end }} \\\n  b"
    assert render(tp, ctx) == "a \\ --tp 2 \\\n  b"
    ctx["Spec"]["parallelism"] = None
    assert render(tp, ctx) == "a \\ \\\n  b"  # what Go renders: `{{-` eats the newline
    assert render("{{ .Spec.Model.Name }}/{{ .ObjectMeta.Namespace }}", ctx) == "m/ns"
    assert render("{{ shutdownTimeout .Spec.Template 15 }}", ctx) == "15"
    assert render("{{ kvTransferConfig .Spec.KVCacheOffloading }}", ctx) == ""
    ctx["Spec"]["kvCacheOffloading"] = {"enabled": True}
    with pytest.raises(ManifestError, match="kvCacheOffloading"):
        render("{{ kvTransferConfig .Spec.KVCacheOffloading }}", ctx)
    with pytest.raises(ManifestError, match="not reproduced"):
        render("{{ toYaml .Spec }}", ctx)
    with pytest.raises(ManifestError, match="no value"):
        render("{{ .Spec.Nothing }}", ctx)


def test_child_name_is_knatives() -> None:
    assert child_name("smollm2", "-kserve-self-signed-certs") == \
        "smollm2-kserve-self-signed-certs"
    long = child_name("x" * 60, "-kserve-self-signed-certs")
    assert len(long) == 63 and long.endswith("-kserve-self-signed-certs")


def test_unsupported_shapes_are_refused() -> None:
    with pytest.raises(ManifestError, match="prefill"):
        plan_llmisvc(_variant(prefill={"replicas": 1}))
    with pytest.raises(ManifestError, match="baseRefs"):
        plan_llmisvc(_variant(baseRefs=[{"name": "my-config"}]))
    config = Manifest(doc={"kind": "LLMInferenceServiceConfig", "metadata": {"name": "my-config"},
                           "spec": {"template": {"containers": [
                               {"name": "main", "env": [{"name": "X", "value": "1"}]}]}}},
                      text="", path="c.yaml")
    [p] = plan_llmisvc(_variant(baseRefs=[{"name": "my-config"}]), [config])
    assert {"name": "X", "value": "1"} in p.container["env"]


# ----- the template's script, run for real with a stand-in `vllm` -----------------------------------
FAKE_VLLM = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "INFO some log line"; echo "0.32.0"; exit 0; fi
exec "{python}" -c 'import json, sys; print("ARGV " + json.dumps(sys.argv[1:]))' "$@"
"""


def _localised(tmp_path: Path, name: str, **kw: Any) -> Any:
    svc = llm(name)
    storage = {adapter_uri(a): tmp_path / a for a in ADAPTERS}
    for folder in [tmp_path / "model", *storage.values()]:
        folder.mkdir(exist_ok=True)
    tls = write_self_signed_tls(tmp_path / "tls")
    dep = LocalDeployment(plan_llmisvc(svc), model_dir=tmp_path / "model", storage=storage,
                          workdir=tmp_path / "run", secrets={
                              "smollm2-lora-kserve-self-signed-certs": tls,
                              "smollm2-kserve-self-signed-certs": tls}, echo=lambda s: None,
                          **kw)
    dep.stop()  # nothing started: removes its emptyDir folders (the plan is what is checked)
    [c] = dep.containers
    return c


def test_runner_maps_port_tls_storage_and_path(tmp_path: Path) -> None:
    c = _localised(tmp_path, "smollm2-lora-cpu")
    [(declared, local)] = c.port_map.items()
    assert declared == 8000 and local != 8000
    script = c.argv[2]
    assert f"--port {local} " in script and "--port 8000" not in script
    assert f"exec vllm serve {tmp_path / 'model'} " in script
    assert f"--ssl-certfile {tmp_path / 'tls' / 'tls.crt'}" in script
    assert f'"path":"{tmp_path / "attn-a"}"' in c.argv[-3]
    assert c.env["PATH"].startswith(f"{SHIM_DIR}{os.pathsep}")
    assert c.env["HOME"].startswith("/tmp/kl-")  # an emptyDir: a short folder (Unix sockets)
    assert c.scheme() == "https"


def run_template_script(folder: Path, name: str) -> tuple[Any, str]:
    """Run the example's real ``bash -c`` template script (planned under ``folder``) with a
    stand-in ``vllm`` first on PATH, which prints the argv it was given after ``ARGV``: the
    container's plan and the script's output."""
    c = _localised(folder, name)
    fake = folder / "bin"
    fake.mkdir()
    (fake / "vllm").write_text(FAKE_VLLM.format(python=sys.executable))
    (fake / "vllm").chmod(0o755)
    env = dict(c.env, PATH=f"{fake}{os.pathsep}{c.env['PATH']}")
    done = subprocess.run(c.argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return c, done.stdout


def test_templates_script_hands_vllm_serve_the_expected_command_line(tmp_path: Path) -> None:
    """The real ``bash -c`` script, its version detection and ``eval`` included, with a
    stand-in ``vllm`` first on PATH: what the runtime's ``vllm serve`` will be given."""
    c, out = run_template_script(tmp_path, "smollm2-lora-cpu")
    assert "[access-log-detect] vllm version='0.32.0'" in out
    argv = json.loads(out.split("ARGV ", 1)[1])
    port, tls = str(c.port_map[8000]), tmp_path / "tls"
    modules = [json.dumps({"name": n, "path": str(tmp_path / a)}, separators=(",", ":"))
               for a in ADAPTERS for n in (a, f"publishers/default/models/{a}")]
    assert argv == [
        "serve", str(tmp_path / "model"), "--served-model-name", "smollm2",
        "publishers/default/models/smollm2", "--port", port,
        "--disable-access-log-for-endpoints", "/health,/metrics,/ping",
        "--shutdown-timeout", "15",
        " ",  # KServe's template passes a lone space here (`\ ` left by `{{- if ...}}`)
        "--enable-ssl-refresh", "--ssl-certfile", str(tls / "tls.crt"),
        "--ssl-keyfile", str(tls / "tls.key"), "--max-model-len=2048",
        f"--api_key_file={tmp_path / 'run' / 'secrets' / 'smollm2-lora-api-key' / 'key'}",
        "--enable-lora", "--max-lora-rank=8", "--max-loras=2", "--max-cpu-loras=4",
        "--lora-modules", *modules]


def test_the_images_vllm_reports_its_version_as_the_template_reads_it() -> None:
    """KServe's template picks its flags from ``vllm --version | tail -1 | awk '{print
    $NF}'``; the image's ``vllm`` (docker/bin/vllm) must answer with vLLM's version."""
    env = dict(os.environ, PATH=f"{SHIM_DIR}{os.pathsep}{Path(sys.executable).parent}"
                                f"{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(["/bin/bash", "-c", "vllm --version 2>/dev/null | tail -1 | "
                           "awk '{print $NF}'"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.strip() == _installed_vllm_version(), done


def _installed_vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):  # the CUDA build, the CPU build
        try:
            return version(dist).split("+")[0]
        except PackageNotFoundError:
            pass
    raise AssertionError("no vLLM distribution installed")


# ----- the command line -------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deployment", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_cli_plans_an_llmisvc_without_runtimes() -> None:
    done = _cli("plan", "--isvc", "llmisvc/smollm2-lora-cpu.yaml")
    assert done.returncode == 0, done.stderr
    assert "# workload / smollm2-lora-kserve (main)" in done.stdout
    assert "exec vllm serve /mnt/models" in done.stdout
    assert "--lora-modules" in done.stdout


def test_cli_needs_runtimes_for_an_inferenceservice_and_storage_for_adapters() -> None:
    done = _cli("plan", "--isvc", "servingruntimes/examples/smollm2-standard-cpu.yaml")
    assert done.returncode == 2 and "give --runtime" in done.stderr
    done = _cli("run", "--isvc", "llmisvc/smollm2-lora-cpu.yaml", "--model-dir",
                ".models/smollm2", "--check")
    assert done.returncode == 2
    assert f"--storage {adapter_uri('attn-a')}=DIR" in done.stderr
