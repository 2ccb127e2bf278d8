"""Start-up problems the operator can fix end ``python -m explainers`` with one clear line on
stderr and exit code 2, not a transformers traceback.

Each case starts the real process; it must exit on its own before it serves anything (the
predictor address is never contacted).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.explainers.conftest import explainer_command, explainer_env
from tests.support.server import free_port

pytestmark = pytest.mark.slow


def run_explainer(model_dir: str, *extra: str,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = explainer_command("127.0.0.1:9", model_dir, free_port(), extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=explainer_env(env))


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    [line] = lines
    assert line.startswith("python -m explainers: error: "), line
    for needle in needles:
        assert needle in line, line
    return line


def test_model_dir_without_tokenizer(tmp_path: Path) -> None:
    proc = run_explainer(str(tmp_path))
    assert_one_line_error(proc, f"--model_dir {tmp_path}", "holds no tokenizer")


def test_model_dir_with_a_broken_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    proc = run_explainer(str(tmp_path))
    assert_one_line_error(proc, f"--model_dir {tmp_path}", "cannot load the tokenizer")


def test_missing_model_dir(tmp_path: Path) -> None:
    proc = run_explainer(str(tmp_path / "absent"))
    assert_one_line_error(proc, "is not a directory")


@pytest.mark.parametrize("extra,needle", [
    (["--api_key=k", "--api_key_file=/etc/hostname"], "--api_key and --api_key_file"),
    (["--predictor_api_key_file=/nonexistent/key"], "--predictor_api_key_file: cannot read"),
    (["--methods=no_such_method"], "unknown method(s) in --methods: no_such_method"),
    (["--max_instances=0"], "--max_instances must be at least 1"),
])
def test_bad_settings(model_dir: str, extra: list[str], needle: str) -> None:
    assert_one_line_error(run_explainer(model_dir, *extra), needle)


def test_empty_key_file_never_shows_the_other_key(model_dir: str, tmp_path: Path) -> None:
    empty = tmp_path / "key"
    empty.write_text("\n")
    proc = run_explainer(model_dir, f"--api_key_file={empty}",
                         env={"PREDICTOR_API_KEY": "predictor-secret-value"})
    line = assert_one_line_error(proc, f"--api_key_file: the API key file {empty} is empty")
    assert "predictor-secret-value" not in proc.stdout + proc.stderr, line
