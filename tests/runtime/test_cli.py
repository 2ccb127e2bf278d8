"""The command line: KServe's flags and vLLM's engine arguments from one argv (no server)."""

from __future__ import annotations

import pytest

from runtime import cli


def test_kserve_flags_and_engine_passthrough() -> None:
    s = cli.parse(["--model_name=m", "--model_dir=/models/x", "--http_port", "9000",
                   "--grpc-port", "9001", "--max-model-len", "1024", "--enforce-eager",
                   "--served-model-name", "alias"])
    assert (s.model_name, s.model_dir, s.http_port, s.grpc_port) == ("m", "/models/x", 9000, 9001)
    assert s.engine_argv == ["--max-model-len", "1024", "--enforce-eager"]
    assert s.served_model_aliases == ["alias"]


def test_model_alias_and_conflict() -> None:
    assert cli.parse(["--model", "/a"]).model_dir == "/a"
    assert cli.parse([]).model_dir == "/mnt/models"
    with pytest.raises(SystemExit):
        cli.parse(["--model", "/a", "--model_dir", "/b"])


def test_vllm_listener_flags_are_dropped() -> None:
    s = cli.parse(["--port", "1234", "--host=0.0.0.0", "--dtype", "float32"])
    assert s.engine_argv == ["--dtype", "float32"]


def test_workers_must_be_one() -> None:
    with pytest.raises(SystemExit):
        cli.parse(["--workers", "2"])
