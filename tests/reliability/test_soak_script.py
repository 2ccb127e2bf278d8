"""The soak script's own logic, without a server: its numbers must be right for its verdict
("growth after warm-up or not") to mean anything.

Why here: the soak itself is not part of CI (10 minutes); its argument checks, process sampling,
trend estimate and outputs are, so a broken script is found before someone needs it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import psutil
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def rows(soak: ModuleType, growth_mib_per_min: float, minutes: int = 10) -> list[dict]:
    """Samples every 5 s: a start-up bump during the first minute, then a steady slope."""
    out = []
    for i in range(minutes * 12 + 1):
        t = i * 5.0
        rss = 1000 + (200 if t >= 30 else 0) + growth_mib_per_min * t / 60
        row = {"t_s": t, "rss_mib": rss, "rss_server_mib": 600.0,
               "rss_children_mib": rss - 600, "fds": 170, "fds_server": 35, "threads": 80,
               "load1": 2.0, "ok": i, "errors": 0}
        row |= {f"p50_ms_{p}": 500 for p in soak.PROTOCOLS}
        out.append(row)
    return out


@pytest.mark.parametrize("growth", [0.0, 12.0])
def test_trend_after_warmup_is_measured(soak: ModuleType, growth: float) -> None:
    args = soak.parse_args(["--pid", "1", "--warmup", "60"])
    summary = soak.summarize(args, rows(soak, growth), soak.Stats(), 600.0)
    assert summary["rss_trend_after_warmup_mib_per_min"] == pytest.approx(growth, abs=0.01)
    assert summary["start"]["rss_mib"] == 1000  # before the start-up bump
    assert summary["after_warmup"]["t_s"] == 60
    assert summary["rss_growth_after_warmup_mib"] == pytest.approx(growth * 9, abs=0.1)


def test_outputs_are_written(soak: ModuleType, tmp_path: Path) -> None:
    args = soak.parse_args(["--pid", "1"])
    data = rows(soak, 3.0, minutes=2)
    summary = soak.summarize(args, data, soak.Stats(), 120.0)
    soak.write_outputs(tmp_path / "s", data, summary)
    assert (tmp_path / "s.png").stat().st_size > 10_000
    assert len((tmp_path / "s.csv").read_text().splitlines()) == len(data) + 1
    assert json.loads((tmp_path / "s.json").read_text())["end"]["t_s"] == 120


def test_only_loopback_and_a_pid(soak: ModuleType) -> None:
    with pytest.raises(SystemExit):
        soak.parse_args(["--pid", "1", "--url", "http://10.0.0.5:8080"])
    with pytest.raises(SystemExit):
        soak.parse_args([])  # neither --pid nor --start
    assert soak.parse_args(["--start"]).pid is None


def _exec_done(pid: int) -> bool:
    try:
        children = psutil.Process(pid).children()
        return bool(children) and children[0].cmdline()[:1] == ["sleep"] \
            and children[0].memory_info().rss > 0
    except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
        return False


def test_sample_counts_descendants(soak: ModuleType) -> None:
    """A shell with a child: the child's RSS and FDs are in the totals, not in the root's."""
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        # Wait until the child is `sleep` itself: between fork and exec, /proc may refuse to
        # show it (AccessDenied mid-exec, skipped by the sampler), which failed one CI run.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _exec_done(proc.pid):
            time.sleep(0.05)
        sample = soak.sample_process(proc.pid)
    finally:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()
    assert sample["rss_children_mib"] > 0, sample
    assert sample["rss_mib"] == pytest.approx(sample["rss_server_mib"]
                                              + sample["rss_children_mib"], abs=0.2), sample
    assert sample["fds"] > sample["fds_server"] >= 3, sample
