"""docs/reference.md (OpenAI): "/openai/tokenize and /openai/detokenize are vLLM's": on the session
predictor they answer with the model's tokens, and detokenize gives the text back."""

from __future__ import annotations

import httpx
import pytest

from tests.runtime.conftest import MODEL

pytestmark = pytest.mark.slow


def test_tokenize_and_detokenize_round_trip(http: httpx.Client) -> None:
    text = "The capital of France is Paris."
    tok = http.post("/openai/tokenize", json={"model": MODEL, "prompt": text})
    assert tok.status_code == 200, tok.text
    tokens = tok.json()["tokens"]
    assert tok.json()["count"] == len(tokens) and 5 < len(tokens) < 20, tok.json()
    assert all(isinstance(t, int) for t in tokens)
    back = http.post("/openai/detokenize", json={"model": MODEL, "tokens": tokens})
    assert back.status_code == 200, back.text
    assert back.json()["prompt"] == text
    # the same tokens the completions route counts for that prompt
    done = http.post("/openai/v1/completions",
                     json={"model": MODEL, "prompt": text, "max_tokens": 1})
    assert done.status_code == 200, done.text
    assert done.json()["usage"]["prompt_tokens"] == len(tokens)
