"""``python -m benchmarks startup``'s own logic with stand-in servers: alternating order,
warm-up starts not counted, medians and ratio from the counted starts, phases read from logs.

Why: the start-up ratio in docs/ is only as good as this bookkeeping; the real servers are
run by the command in docs/benchmarks.md (minutes per start, not a CI test)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import startup

CONFIG = ("Initializing a V1 LLM engine (v0.32.0) with config: model='/m', dtype=torch.float32, "
          "enforce_eager=True")


class StandIn:
    """A server that is 'ready' after a scripted time and writes a vLLM-like log."""

    def __init__(self, name: str, ready: float, log_dir: Path, calls: list[str]) -> None:
        self.name, self.calls = name, calls
        self.ready_s: float | None = None
        self._ready = ready
        self.log_path = log_dir / f"{name}.log"
        self.stopped = False

    def start(self) -> StandIn:
        self.calls.append(self.name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text(
            f"x {CONFIG}\nLoading weights took {self._ready / 10:.2f} seconds\n"
            f"init engine (profile, create kv cache, warmup model) took {self._ready / 5:.2f} s\n")
        self.ready_s = self._ready
        return self

    def stop(self, timeout: float = 20.0) -> int:
        self.stopped = True
        return 0


def test_alternating_starts_medians_and_ratio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    """Each server alone, order alternating, warm-up starts dropped, ratio runtime/vllm."""
    calls: list[str] = []
    times = {"vllm": iter([99.0, 30.0, 32.0, 31.0]), "runtime": iter([99.0, 33.0, 36.0, 30.0])}
    made: list[StandIn] = []

    def factory(name: str) -> Any:
        def make(model_dir: str, served: str, engine_args: list[str], *rest: Any) -> StandIn:
            log_dir = next(a for a in rest if isinstance(a, Path))
            made.append(StandIn(name, next(times[name]), log_dir, calls))
            return made[-1]
        return make

    monkeypatch.setattr(startup, "vllm_server", factory("vllm"))
    monkeypatch.setattr(startup, "runtime_server", factory("runtime"))
    args = argparse.Namespace(model_dir=str(tmp_path), served_model_name="m", trials=3,
                              warmup_starts=1, startup_timeout=10.0, out=tmp_path / "out")
    assert startup.cmd_startup(args, ["--dtype=float32"]) == 0
    assert calls == ["vllm", "runtime", "runtime", "vllm", "vllm", "runtime", "runtime", "vllm"]
    assert all(s.stopped for s in made)
    doc = json.loads((tmp_path / "out" / "startup.json").read_text())
    assert [t["ready_s"] for t in doc["trials"]] == [33.0, 30.0, 32.0, 36.0, 30.0, 31.0]
    ready = doc["summary"]["ready_s"]
    assert (ready["runtime"], ready["vllm"]) == (33.0, 31.0)
    assert ready["ratio"] == pytest.approx(33 / 31)
    assert doc["summary"]["engine_init_s"]["runtime"] == pytest.approx(6.6)
    assert doc["settings_differences"] == []
    assert "| ready_s | 33.0 | 31.0 | 1.065 |" in (tmp_path / "out" / "startup.md").read_text()


def test_phases_are_read_from_vllms_log_lines(tmp_path: Path) -> None:
    """The engine's own phase lines are parsed; a log without them gives no phases."""
    log = tmp_path / "a.log"
    log.write_text("(Worker pid=1) INFO [default_loader.py:501] Loading weights took 2.08 seconds\n"
                   "(EngineCore pid=2) INFO [core.py:402] init engine (profile, create kv cache, "
                   "warmup model) took 8.64 s\n")
    assert startup.phases(log) == {"weights_s": 2.08, "engine_init_s": 8.64}
    assert startup.phases(tmp_path / "missing.log") == {}
