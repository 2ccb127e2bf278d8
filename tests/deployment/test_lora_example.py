"""The LoRA example (servingruntimes/examples/smollm2-lora-cpu.yaml): base model and adapters
from ``storageUris``, mapped by the local runner to local folders, and served.

The fast tests check the storage rules the runner shares with KServe's webhook (one of
``storageUri`` / ``storageUris``, mount paths on one volume) and that each mount path of the
example becomes the folder given for its URI. The slow test runs the example through the
runner's command line, as a user would, and asks every adapter by name: its greedy answer must
be what transformers + peft answer with the same adapter, and differ from the base model's.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from deployment.local import LocalDeployment
from deployment.manifests import ManifestError, plan, storage_locations
from tests.deployment.conftest import (
    EXAMPLES_DIR,
    REPO,
    RUNNER_START_TIMEOUT,
    example,
    example_key,
    runtimes,
    serve_runner,
    stop_runner,
)
from tests.support.lora import peft_greedy

EXAMPLE = EXAMPLES_DIR / "smollm2-lora-cpu.yaml"
BASE_URI = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
ADAPTERS_URI = "s3://example-models/smollm2-adapters"
ADAPTERS = ("attn-a", "mlp-b", "attn-c", "mlp-d")
PROMPT = "My favourite food is"  # the example adapters change the base model's answer at once
TOKENS = 16


def _lora_plan() -> Any:
    [p] = plan(example("smollm2-lora-cpu"), runtimes(), ["predictor"])
    return p


def test_example_takes_base_and_adapters_from_storage_uris() -> None:
    p = _lora_plan()
    assert p.storage == [{"uri": BASE_URI, "mountPath": "/mnt/models/base"},
                         {"uri": ADAPTERS_URI, "mountPath": "/mnt/models/adapters"}]
    args = p.container["args"]
    assert args[-4:] == [f"{a}=/mnt/models/adapters/{a}" for a in ADAPTERS]
    assert "--enable-lora" in args and "--max-loras=4" in args
    # the InferenceService's --model_dir comes after the runtime's, so it is the one used
    dirs = [a for a in args if a.startswith("--model_dir=")]
    assert dirs[-1] == "--model_dir=/mnt/models/base", dirs
    assert "storageUris" not in p.pod  # not a Pod field: the storage initializer's input


def test_runner_maps_each_mount_path_to_the_folder_of_its_uri(tmp_path: Path) -> None:
    base, adapters = tmp_path / "base", tmp_path / "adapters"
    base.mkdir()
    adapters.mkdir()
    dep = LocalDeployment([_lora_plan()], storage={BASE_URI: base, ADAPTERS_URI: adapters},
                          workdir=tmp_path / "w", echo=lambda _: None)
    argv = dep.containers[0].argv
    assert f"--model_dir={base}" in argv
    assert [a for a in argv if a.startswith("attn-a=")] == [f"attn-a={adapters}/attn-a"]
    assert f"mlp-d={adapters}/mlp-d" in argv


def test_runner_refuses_a_storage_uri_without_a_local_folder(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=f"--storage {re.escape(ADAPTERS_URI)}=DIR"):
        LocalDeployment([_lora_plan()], storage={BASE_URI: tmp_path}, workdir=tmp_path / "w")
    with pytest.raises(ManifestError, match="not a folder"):
        LocalDeployment([_lora_plan()], workdir=tmp_path / "w",
                        storage={BASE_URI: tmp_path, ADAPTERS_URI: tmp_path / "missing"})


def test_storage_uri_still_maps_to_the_model_dir(tmp_path: Path) -> None:
    """The other examples keep working with --model-dir alone (storageUri at /mnt/models)."""
    [p] = plan(example("smollm2-standard-cpu"), runtimes(), ["predictor"])
    assert p.storage == [{"uri": BASE_URI, "mountPath": "/mnt/models"}]
    dep = LocalDeployment([p], model_dir=tmp_path, workdir=tmp_path / "w", echo=lambda _: None)
    assert f"--model_dir={tmp_path}" in dep.containers[0].argv


def test_storage_rules_of_kserves_webhook() -> None:
    pred = copy.deepcopy(example("smollm2-lora-cpu").doc["spec"]["predictor"])
    pred["model"]["storageUri"] = BASE_URI
    with pytest.raises(ManifestError, match="both model.storageUri and storageUris"):
        storage_locations(pred)
    del pred["model"]["storageUri"]
    pred["storageUris"][1]["mountPath"] = "/opt/adapters"  # no common parent with /mnt/...
    with pytest.raises(ManifestError, match="no common parent"):
        storage_locations(pred)
    pred["storageUris"][1]["mountPath"] = "/mnt/models/../etc"
    with pytest.raises(ManifestError, match="without '..'"):
        storage_locations(pred)
    pred["storageUris"] = [{"uri": BASE_URI}]  # mountPath defaults to /mnt/models
    assert storage_locations(pred) == [{"uri": BASE_URI, "mountPath": "/mnt/models"}]


def test_cli_requires_a_folder_for_every_storage_uri(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deployment", "run", "--isvc", str(EXAMPLE), "--runtime",
         "servingruntimes/", "--storage", f"{BASE_URI}={tmp_path}", "--check"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"--storage {ADAPTERS_URI}=DIR" in done.stderr


def test_cli_adapters_builds_into_out_and_keeps_what_is_built(tmp_path: Path) -> None:
    """``python -m deployment adapters`` writes one folder per example adapter under --out;
    folders already built are kept (here: stand-ins, so nothing is built and peft not run)."""
    for name in ADAPTERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text("{}")
    done = subprocess.run(
        [sys.executable, "-m", "deployment", "adapters", "--base", "/nonexistent", "--out",
         str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{n}: {tmp_path / n}" for n in ADAPTERS]


# ---- the example for real ----

def _peft_reference(model_dir: str, adapters: dict[str, Path]) -> dict[str, list[int]]:
    """Greedy token ids of PROMPT: base model and each adapter, transformers + peft."""
    got = peft_greedy(model_dir, PROMPT, TOKENS, {n: adapters[n] for n in ADAPTERS})
    return {"base" if name is None else name: ids for name, ids in got.items()}


@pytest.mark.slow
@pytest.mark.timeout(RUNNER_START_TIMEOUT + 180)  # peft's reference, start-up, five completions
def test_example_serves_every_adapter_through_the_runner(
        lora_adapters: dict[str, Path], tmp_path: Path) -> None:
    from tests.support.server import DEFAULT_MODEL_DIR

    model_dir = str(DEFAULT_MODEL_DIR)
    adapters_dir = {p.parent for p in lora_adapters.values()}.pop()
    refs = _peft_reference(model_dir, lora_adapters)
    argv = [sys.executable, "-m", "deployment", "run", "--isvc", str(EXAMPLE),
            "--runtime", "servingruntimes/", "--component", "predictor",
            "--storage", f"{BASE_URI}={model_dir}", "--storage", f"{ADAPTERS_URI}={adapters_dir}",
            "--env", "VLLM_CPU_KVCACHE_SPACE=1", "--workdir", str(tmp_path / "run")]
    proc, url = serve_runner(argv, tmp_path / "runner.log", "predictor",
                             dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        log = (tmp_path / "runner.log").read_text()
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert re.search(rf"ok +{kind}", log), log[-3000:]
        # the key of the example's Secret, which the runner wrote as the key file
        client = openai.OpenAI(base_url=f"{url}/openai/v1", api_key=example_key(EXAMPLE),
                               timeout=300)
        cards = {m.id: m for m in client.models.list().data}
        assert set(ADAPTERS) | {"smollm2-lora"} <= set(cards), sorted(cards)

        def answer(model: str) -> list[int]:
            out = client.completions.create(model=model, prompt=PROMPT, max_tokens=TOKENS,
                                            temperature=0,
                                            extra_body={"return_token_ids": True})
            return list(out.choices[0].token_ids)  # type: ignore[attr-defined]

        base = answer("smollm2-lora")
        assert base == refs["base"]
        for name in ADAPTERS:
            got = answer(name)
            assert got != base, f"adapter {name} answers like the base model"
            assert got == refs[name], f"adapter {name}: runner {got} != peft {refs[name]}"
    finally:
        stop_runner(proc)  # the runner stops its workloads on SIGTERM
    assert proc.returncode in (0, 130), proc.returncode
