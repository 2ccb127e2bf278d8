"""The command line: KServe's flags and vLLM's engine arguments from one argv (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import cli


def test_kserve_flags_and_engine_passthrough(tmp_path) -> None:
    s = cli.parse(["--model_name=m", f"--model_dir={tmp_path}", "--http_port", "9000",
                   "--grpc-port", "9001", "--max-model-len", "1024", "--enforce-eager",
                   "--served-model-name", "alias"])
    assert (s.model_name, s.model_dir, s.http_port, s.grpc_port) == ("m", str(tmp_path), 9000,
                                                                      9001)
    assert s.engine_argv == ["--max-model-len", "1024", "--enforce-eager"]
    assert s.served_model_aliases == ["alias"]


def test_served_model_name_takes_several_values(tmp_path) -> None:
    """vLLM's --served-model-name is nargs="+" (KServe's LLMInferenceService passes two)."""
    s = cli.parse(["--model_name=m", f"--model_dir={tmp_path}", "--served-model-name", "m",
                   "publishers/ns/models/m", "--max-model-len=1024"])
    assert s.served_model_aliases == ["publishers/ns/models/m"]
    assert s.engine_argv == ["--max-model-len=1024"]


def test_model_alias_conflict_and_missing_folder(tmp_path) -> None:
    assert cli.parse(["--model", str(tmp_path)]).model_dir == str(tmp_path)
    assert cli.parse(["--model", "org/hub-model"]).model_dir == "org/hub-model"
    with pytest.raises(SystemExit):
        cli.parse(["--model", str(tmp_path), "--model_dir", "/b"])
    with pytest.raises(SystemExit):
        cli.parse(["--model_dir", str(tmp_path / "missing")])


def test_vllm_listener_flags_are_dropped(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    s = cli.parse(["--model_dir", str(tmp_path), "--port", "1234", "--host=0.0.0.0",
                   "--uds", "/tmp/vllm.sock", "--dtype", "float32"])
    assert s.engine_argv == ["--dtype", "float32"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for flag in ("--port", "--host", "--uds"):
        assert any(f"ignoring vLLM's {flag}" in m for m in warned), (flag, warned)


def test_workers_must_be_one(tmp_path) -> None:
    with pytest.raises(SystemExit):
        cli.parse(["--model_dir", str(tmp_path), "--workers", "2"])


def test_help_engine_lists_vllm_engine_arguments() -> None:
    """README: `python -m runtime --help-engine` lists vLLM's engine arguments (the exact
    command, no --model_dir: it must not need a model, and starts no engine)."""
    import subprocess
    import sys

    from tests.support.server import REPO

    done = subprocess.run([sys.executable, "-m", "runtime", "--help-engine"], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    for flag in ("--max-model-len", "--dtype", "--enforce-eager", "--tensor-parallel-size",
                 "--served-model-name"):
        assert flag in done.stdout, flag
    assert "--max_request_bytes" not in done.stdout  # vLLM's arguments, not the runtime's


@pytest.mark.parametrize("argv,env,needle", [
    (["--api_key="], None, "--api_key is empty"),
    (["--api_key_file="], None, "--api_key_file is empty"),
    ([], "", "$API_KEY is set but empty"),
])
def test_an_empty_key_refuses_to_start(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str], argv: list[str],
                                       env: str | None, needle: str) -> None:
    """Keys fail closed: ``--api_key=``, ``--api_key_file=`` or an empty ``$API_KEY`` is a
    usage error (exit 2) naming the source, not a server without a key."""
    monkeypatch.delenv("API_KEY", raising=False)
    if env is not None:
        monkeypatch.setenv("API_KEY", env)
    assert needle in usage_error(tmp_path, argv, capsys)


def usage_error(model_dir: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``python -m runtime`` prints when ``argv`` is refused as a usage error (exit 2)."""
    with pytest.raises(SystemExit) as done:
        cli.parse(["--model_name=m", f"--model_dir={model_dir}", *argv])
    assert done.value.code == 2
    return capsys.readouterr().err
