"""The LLMInferenceService examples run by ``python -m deployment run`` with the real runtime.

The runner merges each example with KServe's default template and runs the template's own
``/bin/bash -c`` script, in which ``vllm serve`` is this runtime (docker/bin/vllm first on
PATH), over HTTPS with a certificate the runner made. One engine start: the LoRA example in
serving mode (every probe passes over HTTPS, the template's own script ran, a chat under
``spec.model.name`` answers "Paris", verified against the runner's certificate, and
``/v1/models`` lists both adapters under both their names).

The plain example goes through the same template: its plan, and the ``vllm serve`` command line
its script hands the runtime, are the LoRA example's minus the LoRA parts (the controller's
LoRA arguments and the adapters' storage), which the fast tests below prove by diffing them.
So the real LoRA run also shows that the plain example starts, passes its probes and answers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from deployment.llmisvc import LORA_MOUNT_ROOT, plan_llmisvc
from deployment.processes import engine_env
from tests.deployment.conftest import (
    REPO,
    RUNNER_START_TIMEOUT,
    example_key,
    serve_runner,
    stop_runner,
)
from tests.deployment.test_llmisvc import llm, run_template_script

ADAPTERS = ("attn-a", "mlp-b")
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
SMALL_CACHE = ["--env", "VLLM_CPU_KVCACHE_SPACE=1"]  # little memory to spare here
# The controller's LoRA flags (deployment/llmisvc.py, lora_args): what LoRA adds to `vllm serve`.
LORA_FLAGS = ("--enable-lora", "--max-lora-rank", "--max-loras", "--max-cpu-loras",
              "--lora-modules")
def _model_dir() -> str:
    from tests.support.server import DEFAULT_MODEL_DIR

    return str(DEFAULT_MODEL_DIR)


def _runner(*args: str) -> list[str]:
    return [sys.executable, "-m", "deployment", "run", *args, *SMALL_CACHE]


def _assert_https_probes_passed(log: str) -> None:
    for kind in PROBES:
        assert re.search(rf"ok +{kind} +GET :8000/health +HTTP 200 on https://127\.0\.0\.1:\d+/"
                         "health", log), log[-4000:]


# ---- the plain example, against the LoRA one: no engine ----

def _cli_plan(path: str) -> dict[str, Any]:
    """What ``python -m deployment plan`` prints for the example's single workload."""
    done = subprocess.run([sys.executable, "-m", "deployment", "plan", "--isvc", path],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    [header, *_] = done.stdout.splitlines()
    assert header.startswith("# workload / "), header
    return dict(yaml.safe_load(done.stdout))


def _is_lora_arg(arg: str) -> bool:
    if arg.split("=", 1)[0] in LORA_FLAGS:
        return True
    module = json.loads(arg.strip("'"))  # '{"name": ..., "path": "/mnt/lora/<name>"}'
    return module.keys() == {"name", "path"} and module["path"].startswith(LORA_MOUNT_ROOT)


def test_plain_example_plans_the_lora_example_minus_its_lora_parts() -> None:
    """Command (the template's script), env, ports, probes, image PATH: equal. The LoRA
    example adds only the controller's LoRA arguments and its adapters' storage."""
    plain = _cli_plan("llmisvc/smollm2-cpu.yaml")
    lora = _cli_plan("llmisvc/smollm2-lora-cpu.yaml")
    assert {k for k in plain if plain[k] != lora[k]} == {"args", "storage"}
    assert plain["args"] == [] and lora["args"][0] == "--enable-lora"
    assert all(_is_lora_arg(a) for a in lora["args"]), lora["args"]
    assert lora["storage"][:1] == plain["storage"]
    assert {(s["mountPath"], s["uri"].rsplit("/", 1)[1]) for s in lora["storage"][1:]} == \
        {(f"{LORA_MOUNT_ROOT}/{a}", a) for a in ADAPTERS}
    # beyond what `plan` prints: the whole container and pod, from the planner itself
    [p] = plan_llmisvc(llm("smollm2-cpu"))
    [q] = plan_llmisvc(llm("smollm2-lora-cpu"))
    assert {**q.container, "args": []} == p.container
    secret = {"smollm2-lora-kserve-self-signed-certs": "smollm2-kserve-self-signed-certs",
              "smollm2-lora-api-key": "smollm2-api-key"}
    volumes = [{**v, "secret": {"secretName": secret[v["secret"]["secretName"]]}}
               if "secret" in v else v for v in q.pod["volumes"]]
    assert {**q.pod, "volumes": volumes} == p.pod  # each its own TLS and key Secrets
    assert q.secrets.keys() == {"smollm2-lora-api-key"} and p.secrets.keys() == {"smollm2-api-key"}


def _served(tmp_path: Path, name: str) -> list[str]:
    """The ``vllm serve`` argv the example's template script hands the runtime (a stand-in
    ``vllm`` prints it), with the runner's local port read back as the template's 8000."""
    folder = tmp_path / name
    folder.mkdir()
    c, out = run_template_script(folder, name)
    argv = json.loads(out.split("ARGV ", 1)[1])
    port = str(c.port_map[8000])
    # each example's own key Secret, written by the runner under its name
    return ["8000" if a == port else re.sub(r"/secrets/[\w-]+-api-key/", "/secrets/<svc>-api-key/",
                                            a.replace(str(folder), "<dir>")) for a in argv]


def test_plain_example_hands_vllm_serve_the_lora_command_minus_its_lora_arguments(
        tmp_path: Path) -> None:
    """The real template script of each example, run with a stand-in ``vllm``: the plain
    example's ``vllm serve`` command line is the LoRA example's without the LoRA tail."""
    plain, lora = _served(tmp_path, "smollm2-cpu"), _served(tmp_path, "smollm2-lora-cpu")
    cut = lora.index("--enable-lora")
    assert plain == lora[:cut], (plain, lora)
    assert all(_is_lora_arg(a.replace("<dir>/", f"{LORA_MOUNT_ROOT}/")) for a in lora[cut:])
    assert plain[:6] == ["serve", "<dir>/model", "--served-model-name", "smollm2",
                         "publishers/default/models/smollm2", "--port"]


# ---- the LoRA example for real ----

@pytest.mark.slow
@pytest.mark.timeout(RUNNER_START_TIMEOUT + 180)  # start-up, then a chat and a listing
def test_lora_example_serves_chat_and_lists_its_adapters(
        lora_adapters: dict[str, Path], tmp_path: Path) -> None:
    storage = [arg for name in ADAPTERS for arg in
               ("--storage", f"s3://example-models/smollm2-adapters/{name}={lora_adapters[name]}")]
    workdir = tmp_path / "run"
    proc, url = serve_runner(_runner("--isvc", "llmisvc/smollm2-lora-cpu.yaml", "--model-dir",
                                     _model_dir(), *storage, "--workdir", str(workdir)),
                             tmp_path / "runner.log", "workload", engine_env())
    try:
        _assert_https_probes_passed((tmp_path / "runner.log").read_text())
        log = (workdir / "logs" / "smollm2-lora-kserve.log").read_text()
        assert "[access-log-detect]" in log  # the template's own script ran
        ca = str(workdir / "tls" / "tls.crt")  # the runner's self-signed certificate
        key = example_key(REPO / "llmisvc" / "smollm2-lora-cpu.yaml")  # the Secret's, as a file
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, timeout=300,
                               http_client=openai.DefaultHttpxClient(verify=ca))
        out = client.chat.completions.create(
            model="smollm2", max_tokens=24, temperature=0,  # spec.model.name
            messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in (out.choices[0].message.content or ""), out
        names = {m.id for m in client.models.list().data}
        expected = {"smollm2", "publishers/default/models/smollm2"}
        expected |= {n for a in ADAPTERS for n in (a, f"publishers/default/models/{a}")}
        assert expected <= names, sorted(names)
    finally:
        stop_runner(proc)
    assert proc.returncode in (0, 130), proc.returncode
