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
    path.write_text("")  # an emptied file: fail closed, every request refused
    os.utime(path, ns=(2, 2))
    assert not key.accepts("Bearer second-key") and not key.accepts(None)
    assert not key.accepts("Bearer ")  # not even an empty token for an empty file
    path.write_text("third\n")
    os.utime(path, ns=(3, 3))
    assert key.accepts("Bearer third")
    path.unlink()  # a file that disappears: the same
    assert not key.accepts("Bearer third") and not key.accepts(None)
    assert key.enabled and key.header() == {}
    path.write_text("third\n")
    assert key.accepts("Bearer third")


@pytest.mark.parametrize("flag,file,env,needle", [
    ("", None, None, "--api_key is empty"),
    ("  ", None, None, "--api_key is empty"),
    (None, "", None, "--api_key_file is empty"),
    (None, None, "", "$API_KEY is set but empty"),
])
def test_an_empty_key_source_refuses_to_start(monkeypatch: pytest.MonkeyPatch, flag: str | None,
                                              file: str | None, env: str | None,
                                              needle: str) -> None:
    """Fail closed: a key source that is given but empty is an error, never "no key"."""
    monkeypatch.delenv("API_KEY", raising=False)
    if env is not None:
        monkeypatch.setenv("API_KEY", env)
    with pytest.raises(ApiKeyError) as err:
        ApiKey.from_sources(flag, file)
    assert needle in str(err.value)


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


# KServe's LLMInferenceService template: `/bin/bash -c "<script>" -- <args>`, the script ending in
# `eval "exec vllm serve ... \` lines; a key written into it is one argument among many words.
SCRIPT = """set -e
echo starting
eval "exec vllm serve /mnt/models --port 8000 \\
  --api-key s1 \\
  --api_key=s2 --predictor-api-key \\"s 3\\" \\
  --predictor_api_key='s4 x' \\
  --api-key \\
    s5 \\
  --api_key_file /run/secrets/key --max-model-len=2048 ${VLLM_ADDITIONAL_ARGS} $@"
exec other --api-key="s6";exec more --predictor-api-key s7|tee log"""


@pytest.mark.parametrize("shell", ["/bin/bash", "sh"])
def test_printed_commands_hide_a_key_inside_a_shell_script(shell: str) -> None:
    from runtime.auth import redact_argv

    argv = [shell, "-c", SCRIPT, "--", "--api-key", "s8", "--max-loras=2"]
    shown = redact_argv(argv)
    for secret in ("s1", "s2", "s 3", "s4", "s5", "s6", "s7", "s8"):
        assert secret not in " ".join(shown), (secret, shown)
    # everything else is kept, word for word: only the values became ***
    assert shown[2].count("***") == 7 and shown[3:] == ["--", "--api-key", "***", "--max-loras=2"]
    assert shown[2] == (SCRIPT.replace("s1", "***").replace("=s2", "=***")
                        .replace('\\"s 3\\"', "***").replace("'s4 x'", "***")
                        .replace("s5", "***").replace('"s6"', "***").replace("s7", "***"))
    assert "--api_key_file /run/secrets/key" in shown[2]  # a path, not a key
