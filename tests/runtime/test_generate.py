"""Triton's generate extension: generate and generate_stream."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.runtime.conftest import MODEL, QUESTION

pytestmark = pytest.mark.slow


def stream_events(http: httpx.Client, body: dict, model: str = MODEL) -> list[dict]:
    """The JSON events of a ``generate_stream`` answer (SSE), after checking its status."""
    events = []
    with http.stream("POST", f"/v2/models/{model}/generate_stream", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def test_generate_answers(http: httpx.Client) -> None:
    r = http.post(f"/v2/models/{MODEL}/generate", json={
        "text_input": QUESTION, "parameters": {"max_tokens": 20, "temperature": 0,
                                               "apply_chat_template": True}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == MODEL and "model_version" in body
    assert "Paris" in body["text_output"]


def test_stream_joins_to_generate(http: httpx.Client) -> None:
    body = {"text_input": "The capital of France is", "parameters": {"max_tokens": 12,
                                                                     "temperature": 0}}
    whole = http.post(f"/v2/models/{MODEL}/generate", json=body).json()
    full = whole["text_output"]
    # the non-streamed answer carries the finish reason and token counts too (README)
    assert whole["finish_reason"] == "length" and whole["usage"]["completion_tokens"] == 12
    events = stream_events(http, body)
    assert len(events) > 3, "text should arrive in several events, as it is produced"
    assert "".join(e["text_output"] for e in events) == full
    assert "Paris" in full
    assert events[-1]["usage"]["completion_tokens"] == 12
    assert events[-1]["finish_reason"] == "length"


def test_top_level_parameters_accepted(http: httpx.Client) -> None:
    r = http.post(f"/v2/models/{MODEL}/generate",
                  json={"text_input": "The capital of France is", "max_tokens": 4,
                        "temperature": 0})
    assert r.status_code == 200 and "Paris" in r.json()["text_output"]
