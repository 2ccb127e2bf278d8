"""The LLMInferenceService examples run by ``python -m deployment run`` with the real runtime.

The runner merges each example with KServe's default template and runs the template's own
``/bin/bash -c`` script, in which ``vllm serve`` is this runtime (docker/bin/vllm first on
PATH), over HTTPS with a certificate the runner made. Two engine starts: the plain example
with ``--check`` (every probe passes over HTTPS), and the LoRA example in serving mode (a chat
under ``spec.model.name`` answers "Paris", verified against the runner's certificate, and
``/v1/models`` lists both adapters under both their names).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from deployment.processes import engine_env
from tests.deployment.conftest import REPO
from tests.support.server import stop_group

pytestmark = pytest.mark.slow

ADAPTERS = ("attn-a", "mlp-b")
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
SMALL_CACHE = ["--env", "VLLM_CPU_KVCACHE_SPACE=1"]  # little memory to spare here


def _model_dir() -> str:
    from tests.support.server import DEFAULT_MODEL_DIR

    return str(DEFAULT_MODEL_DIR)


def _runner(*args: str) -> list[str]:
    return [sys.executable, "-m", "deployment", "run", *args, *SMALL_CACHE]


def _assert_https_probes_passed(log: str) -> None:
    for kind in PROBES:
        assert re.search(rf"ok +{kind} +GET :8000/health +HTTP 200 on https://127\.0\.0\.1:\d+/"
                         "health", log), log[-4000:]


def test_plain_example_passes_its_probes_through_kserves_template(tmp_path: Path) -> None:
    done = subprocess.run(
        _runner("--isvc", "llmisvc/smollm2-cpu.yaml", "--model-dir", _model_dir(),
                "--workdir", str(tmp_path / "run"), "--check"),
        capture_output=True, text=True, timeout=1200, cwd=REPO, env=engine_env())
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    _assert_https_probes_passed(out)
    assert re.search(r"^workload: https://127\.0\.0\.1:\d+$", done.stdout, re.M), out
    log = (tmp_path / "run" / "logs" / "smollm2-kserve.log").read_text()
    assert "[access-log-detect]" in log  # the template's own script ran


def _serve(argv: list[str], log: Path, timeout: float = 1200) -> tuple[subprocess.Popen, str]:
    """Start the runner in serving mode; it and the workload URL once every probe passed."""
    out = log.open("w")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True, env=engine_env())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if "all probes passed" in text:
            found = re.search(r"^workload: (https://\S+)$", text, re.M)
            assert found, text[-4000:]
            return proc, found.group(1)
        if proc.poll() is not None:
            raise AssertionError(f"the runner exited with {proc.returncode}:\n{text[-6000:]}")
        time.sleep(2)
    os.killpg(proc.pid, signal.SIGTERM)
    raise AssertionError(f"no probes passed in {timeout} s:\n{log.read_text()[-4000:]}")


def test_lora_example_serves_chat_and_lists_its_adapters(
        lora_adapters: dict[str, Path], tmp_path: Path) -> None:
    storage = [arg for name in ADAPTERS for arg in
               ("--storage", f"s3://example-models/smollm2-adapters/{name}={lora_adapters[name]}")]
    workdir = tmp_path / "run"
    proc, url = _serve(_runner("--isvc", "llmisvc/smollm2-lora-cpu.yaml", "--model-dir",
                               _model_dir(), *storage, "--workdir", str(workdir)),
                       tmp_path / "runner.log")
    try:
        _assert_https_probes_passed((tmp_path / "runner.log").read_text())
        ca = str(workdir / "tls" / "tls.crt")  # the runner's self-signed certificate
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=300,
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
        stop_group(proc)  # the runner stops its workloads on SIGTERM
    assert proc.returncode in (0, 130), proc.returncode
