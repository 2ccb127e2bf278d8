"""docs/reference.md (OpenAI): "The unprefixed /v1/completions, /v1/chat/completions and
/v1/embeddings answer too; /v1/models stays KServe's v1 model list." On the session predictor
the unprefixed routes answer exactly as the /openai ones (same text at temperature 0); the
embeddings case is in test_embeddings.py (it needs an embedding model)."""

from __future__ import annotations

import httpx
import pytest

from tests.runtime.conftest import MODEL, QUESTION

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path,body,text_of", [
    ("/v1/completions",
     {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0},
     lambda j: j["choices"][0]["text"]),
    ("/v1/chat/completions",
     {"model": MODEL, "max_tokens": 20, "temperature": 0,
      "messages": [{"role": "user", "content": QUESTION}]},
     lambda j: j["choices"][0]["message"]["content"]),
], ids=["completions", "chat"])
def test_unprefixed_openai_routes_answer_like_openai_ones(http: httpx.Client, path: str,
                                                          body: dict, text_of) -> None:
    plain = http.post(path, json=body)
    prefixed = http.post("/openai" + path, json=body)
    assert plain.status_code == 200, plain.text
    assert prefixed.status_code == 200, prefixed.text
    assert "Paris" in text_of(plain.json())
    assert text_of(plain.json()) == text_of(prefixed.json())
    assert plain.json()["object"] == prefixed.json()["object"]
    assert plain.json()["usage"] == prefixed.json()["usage"]
    assert "x-request-id" in plain.headers


def test_unprefixed_models_stays_kserve_v1(http: httpx.Client) -> None:
    kserve = http.get("/v1/models")
    assert kserve.status_code == 200, kserve.text
    assert kserve.json() == {"models": [MODEL]}
    openai_list = http.get("/openai/v1/models")
    assert openai_list.status_code == 200, openai_list.text
    assert openai_list.json()["object"] == "list"
    assert MODEL in [m["id"] for m in openai_list.json()["data"]]
