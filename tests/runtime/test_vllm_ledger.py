"""The engine-start ledger and switch (runtime.engine.vllm_ledger): in-process on the plugin
itself (fast tier), and once for real, a ``python -m runtime`` whose engine is refused (slow:
it spawns vLLM's engine-core process, which refuses before loading anything)."""

from __future__ import annotations

import multiprocessing
import subprocess
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from runtime.engine import vllm_ledger
from tests.support.server import REPO, engine_env, free_port, runtime_command


def test_registered_as_a_vllm_plugin() -> None:
    names = {e.value for e in entry_points(group="vllm.general_plugins")}
    assert "runtime.engine.vllm_ledger:record" in names, (
        "the vLLM plugin is not registered (reinstall the package: `make install`)")


def _as_process(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(multiprocessing.current_process(), "name", name)


def test_an_engine_core_writes_one_line(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    monkeypatch.setenv(vllm_ledger.LEDGER_ENV, str(ledger))
    monkeypatch.delenv(vllm_ledger.FORBID_ENV, raising=False)
    _as_process(monkeypatch, "EngineCore")
    vllm_ledger.record()
    [line] = ledger.read_text().splitlines()
    assert "pid=" in line and "launcher=" in line and "REFUSED" not in line


def test_other_processes_write_nothing_and_are_not_refused(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    monkeypatch.setenv(vllm_ledger.LEDGER_ENV, str(ledger))
    monkeypatch.setenv(vllm_ledger.FORBID_ENV, "1")
    for name in ("MainProcess", "VllmWorker-0"):  # the API server, the model's worker
        _as_process(monkeypatch, name)
        vllm_ledger.record()
    assert not ledger.exists()


def test_a_forbidden_engine_core_is_recorded_then_refused(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    monkeypatch.setenv(vllm_ledger.LEDGER_ENV, str(ledger))
    monkeypatch.setenv(vllm_ledger.FORBID_ENV, "1")
    _as_process(monkeypatch, "EngineCore_DP0")
    with pytest.raises(vllm_ledger.EngineForbiddenError, match=vllm_ledger.FORBID_ENV):
        vllm_ledger.record()
    assert "REFUSED" in ledger.read_text()


@pytest.mark.slow
def test_the_runtime_started_by_plain_subprocess_is_refused(tmp_path: Path) -> None:
    """The fast tier's net for routes other than ``ChildProcess`` (``subprocess``, ``bash -c``
    templates): the real runtime, launched with ``subprocess``, exits without building an
    engine, and the refusal is in the ledger with its launcher's command line, key redacted."""
    ledger = tmp_path / "ledger"
    t0 = time.monotonic()
    done = subprocess.run(
        runtime_command(http_port=free_port(), grpc_port=free_port(),
                        extra=["--api_key", "ledger-key-123"]), cwd=REPO,
        env=engine_env({vllm_ledger.FORBID_ENV: "1", vllm_ledger.LEDGER_ENV: str(ledger)}),
        capture_output=True, text=True, timeout=240)
    assert done.returncode != 0, done.stdout[-2000:]
    assert time.monotonic() - t0 < 240
    [line] = ledger.read_text().splitlines()
    assert "REFUSED" in line and "-m runtime" in line, line
    assert "ledger-key-123" not in line and "--api_key" in line, line
    assert vllm_ledger.FORBID_ENV in done.stdout + done.stderr
