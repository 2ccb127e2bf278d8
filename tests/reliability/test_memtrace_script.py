"""``scripts/memtrace.py``: its comparison names the line whose memory grew, and the soak
script puts the runtime under it with the same arguments.

Why: the tool is how a slow RSS rise in the soak is attributed to code; a comparison that
pointed at the wrong line, or a soak that traced a different command, would mislead.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tracemalloc
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

_kept: list[bytes] = []


def _grow() -> None:
    _kept.extend(bytes(1024) for _ in range(2000))  # the line that must be named


def test_compare_names_the_line_that_grew(tmp_path: Path) -> None:
    """memtrace compare: the allocation site that grew, with its size, comes first."""
    tracemalloc.start(4)
    try:
        tracemalloc.take_snapshot().dump(str(tmp_path / "a.pickle"))
        _grow()
        tracemalloc.take_snapshot().dump(str(tmp_path / "b.pickle"))
    finally:
        tracemalloc.stop()
        _kept.clear()
    out = subprocess.run([sys.executable, str(SCRIPTS / "memtrace.py"), "compare",
                          str(tmp_path / "a.pickle"), str(tmp_path / "b.pickle"), "--top", "1",
                          "--key-type", "lineno"], capture_output=True, text=True, check=True)
    size, where = out.stdout.splitlines()[1:3]
    assert 2000 <= float(size.split()[0]) < 2600, out.stdout  # 2000 x 1 KiB, plus headers
    line = next(i for i, text in enumerate(Path(__file__).read_text().splitlines(), 1)
                if "the line that must be named" in text)
    assert f'test_memtrace_script.py", line {line}' in where, out.stdout


def test_soak_runs_the_same_command_under_memtrace(tmp_path: Path) -> None:
    """soak --tracemalloc: the runtime's own arguments, after memtrace's, unchanged."""
    spec = importlib.util.spec_from_file_location("soak_for_memtrace", SCRIPTS / "soak.py")
    assert spec is not None and spec.loader is not None
    soak = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = soak
    spec.loader.exec_module(soak)
    seen: list[list[str]] = []

    class Recorder:
        def __init__(self, argv: list[str], **_: object) -> None:
            seen.append(list(argv))
            self.argv = argv

        def start(self) -> Recorder:
            return self

    soak.ServerProcess = Recorder
    plain = soak.parse_args(["--start", "--model-dir", "m"])
    traced = soak.parse_args(["--start", "--model-dir", "m", "--tracemalloc", str(tmp_path),
                              "--tracemalloc-every", "7"])
    soak.free_port = iter(range(40000, 40004)).__next__
    soak.start_server(plain)
    soak.start_server(traced)
    runtime_args = [a for a in seen[0][3:] if "_port=" not in a]
    assert seen[0][1:3] == ["-m", "runtime"]
    assert seen[1][1:8] == [str(SCRIPTS / "memtrace.py"), "run", "--out", str(tmp_path),
                            "--every", "7.0", "--"]
    assert [a for a in seen[1][8:] if "_port=" not in a] == runtime_args
