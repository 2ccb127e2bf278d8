"""Unit tier: the API key from a flag, the environment or a file (``runtime.auth``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.auth import ApiKey, ApiKeyError


def test_no_key_accepts_everything() -> None:
    key = ApiKey()
    assert not key.enabled and key.accepts(None) and key.header() == {}


def test_bearer_required_when_set() -> None:
    key = ApiKey("k1")
    assert key.accepts("Bearer k1") and key.accepts(b"bearer k1")
    assert not key.accepts(None) and not key.accepts("Bearer k2") and not key.accepts("k1")
    assert key.header() == {"Authorization": "Bearer k1"}


def test_key_never_in_repr() -> None:
    assert "k1" not in repr(ApiKey("k1")) and "<hidden>" in repr(ApiKey("k1"))


def test_env_and_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "from-env")
    assert ApiKey.from_sources(None, None).accepts("Bearer from-env")
    assert ApiKey.from_sources("flag", None).accepts("Bearer flag")
    with pytest.raises(ApiKeyError, match="mutually exclusive"):
        ApiKey.from_sources("flag", "/some/file")


def test_file_rotation(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("first\n")
    key = ApiKey.from_sources(None, str(path))
    assert key.accepts("Bearer first")
    path.write_text("second-key\n")
    os.utime(path, ns=(1, 1))  # a different identity even within one clock tick
    assert key.accepts("Bearer second-key") and not key.accepts("Bearer first")
    path.write_text("")  # a broken rotation keeps the key in force
    os.utime(path, ns=(2, 2))
    assert key.accepts("Bearer second-key")


def test_missing_or_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ApiKeyError, match="cannot read"):
        ApiKey(file=str(tmp_path / "absent"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ApiKeyError, match="empty"):
        ApiKey(file=str(tmp_path / "empty"))


def test_printed_commands_hide_the_key() -> None:
    from runtime.auth import redact_argv

    argv = ["python", "-m", "runtime", "--api_key", "k1", "--api-key=k2",
            "--predictor_api_key=k3", "--model_name", "m"]
    shown = " ".join(redact_argv(argv))
    assert "k1" not in shown and "k2" not in shown and "k3" not in shown
    assert shown.endswith("--model_name m") and shown.count("***") == 3
