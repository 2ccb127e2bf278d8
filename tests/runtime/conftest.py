"""Fixtures for the predictor's tests: clients bound to the session's real server."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.server import ServerProcess

MODEL = "smollm2"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="session")
def http(predictor: ServerProcess) -> httpx.Client:
    with httpx.Client(base_url=predictor.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def oai(predictor: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=predictor.url + "/openai/v1", api_key="none", timeout=120)


def v2_body(prompts: list[str], **params: object) -> dict:
    return {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [len(prompts)],
                        "data": prompts}], "parameters": params}


def assert_still_serving(http: httpx.Client) -> None:
    """The server answers a real question correctly: bad input left it serving."""
    r = http.post(f"/v2/models/{MODEL}/infer",
                  json=v2_body([QUESTION], max_tokens=16, temperature=0, apply_chat_template=True))
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["outputs"][0]["data"][0]
