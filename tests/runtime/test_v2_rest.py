"""v2 REST infer and metadata with tritonclient.http, kserve's InferenceRESTClient and httpx."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from tests.runtime.conftest import MODEL, QUESTION, v2_body

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "What is the capital of Germany?"]


def test_tritonclient_http_two_prompts(predictor) -> None:
    client = triton_http.InferenceServerClient(url=predictor.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    inp = triton_http.InferInput("text_input", [2], "BYTES")
    inp.set_data_from_numpy(np.array([p.encode() for p in PROMPTS], dtype=object))
    res = client.infer(MODEL, [inp], outputs=[triton_http.InferRequestedOutput("text_output")],
                       parameters={"max_tokens": 20, "temperature": 0,
                                   "apply_chat_template": True})
    texts = [t.decode() for t in res.as_numpy("text_output")]
    assert "Paris" in texts[0] and "Berlin" in texts[1]


def test_kserve_rest_client_two_prompts(predictor) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def go() -> list[str]:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
        req = InferRequest(model_name=MODEL, infer_inputs=[
            InferInput("text_input", [2], "BYTES", data=PROMPTS)],
            parameters={"max_tokens": 20, "temperature": 0, "apply_chat_template": True})
        try:
            res = await client.infer(predictor.url, req, model_name=MODEL)
        finally:
            await client.close()
        return [t.decode() if isinstance(t, bytes) else t for t in res.outputs[0].data]

    texts = asyncio.run(go())
    assert "Paris" in texts[0] and "Berlin" in texts[1]


def test_stop_and_max_tokens_mean_the_same(http: httpx.Client) -> None:
    r = http.post(f"/v2/models/{MODEL}/infer",
                  json=v2_body(["1, 2, 3, 4,"], max_tokens=20, temperature=0, stop="7"))
    assert r.status_code == 200, r.text
    text = r.json()["outputs"][0]["data"][0]
    assert "5" in text and "7" not in text
    default = http.post(f"/v2/models/{MODEL}/infer", json=v2_body(["1, 2, 3, 4,"], temperature=0))
    assert default.status_code == 200, default.text
    # The default max_tokens is the OpenAI completions default (16): the same text, the same
    # 16 tokens, as OpenAI completions without max_tokens.
    oai = http.post("/openai/v1/completions",
                    json={"model": MODEL, "prompt": "1, 2, 3, 4,", "temperature": 0})
    assert oai.status_code == 200, oai.text
    assert oai.json()["usage"]["completion_tokens"] == 16
    assert default.json()["outputs"][0]["data"][0] == oai.json()["choices"][0]["text"]


def test_chat_template_max_tokens_defaults_to_the_context(http: httpx.Client) -> None:
    """With ``apply_chat_template`` and no max_tokens, the answer may run past 16 tokens (the
    chat default is "up to the context", as on OpenAI chat), and it is OpenAI chat's answer."""
    question = "List the numbers from 1 to 30, separated by commas."
    r = http.post(f"/v2/models/{MODEL}/generate", json={
        "text_input": question, "parameters": {"temperature": 0, "apply_chat_template": True}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] > 16 and "20" in body["text_output"], body
    chat = http.post("/openai/v1/chat/completions", json={
        "model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": question}]})
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"] == body["text_output"]


def test_metadata_describes_tensors_and_parameters(http: httpx.Client) -> None:
    meta = http.get(f"/v2/models/{MODEL}").json()
    assert meta["inputs"][0] == {"name": "text_input", "datatype": "BYTES", "shape": [-1]}
    assert meta["outputs"][0]["name"] == "text_output"
    assert {"max_tokens", "temperature", "top_p", "stop", "seed",
            "apply_chat_template"} <= set(meta["parameters"])
    server = http.get("/v2").json()
    assert "generate" in server["extensions"]
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").json()["ready"] is True
    assert http.get(f"/v2/models/{MODEL}/ready").status_code == 200
    assert http.get(f"/v1/models/{MODEL}").json()["ready"] is True


def test_chat_template_on_v2(http: httpx.Client) -> None:
    r = http.post(f"/v2/models/{MODEL}/infer",
                  json=v2_body([QUESTION], max_tokens=20, temperature=0, apply_chat_template=True))
    assert "Paris" in r.json()["outputs"][0]["data"][0]
