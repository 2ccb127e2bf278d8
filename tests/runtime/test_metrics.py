"""/metrics carries vLLM's engine series and the runtime's per-protocol series."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.runtime.conftest import MODEL, v2_body

pytestmark = pytest.mark.slow


def _value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _delta(before: str, after: str, name: str, **labels: str) -> float:
    return _value(after, name, **labels) - _value(before, name, **labels)


def test_metrics_by_protocol(http: httpx.Client, predictor) -> None:
    """One request per protocol moves each protocol's series by exactly what it did: one
    success, its 5 generated tokens, one TTFT and one TPOT observation."""
    from tests.runtime.test_grpc import grpc_infer

    before = http.get("/metrics").text
    five = {"max_tokens": 5, "ignore_eos": True}
    assert http.post(f"/v2/models/{MODEL}/infer",
                     json=v2_body(["Hello"], **five)).status_code == 200
    assert http.post(f"/v2/models/{MODEL}/generate",
                     json={"text_input": "Hello", "parameters": five}).status_code == 200
    assert http.post("/openai/v1/completions",
                     json={"model": MODEL, "prompt": "Hello", **five}).status_code == 200
    assert http.post(f"/v1/models/{MODEL}:predict",
                     json={"instances": ["Hello"], "parameters": five}).status_code == 200
    grpc_infer(predictor.grpc_port, ["Hello"], five)
    assert http.post(f"/v2/models/{MODEL}/infer",
                     json=v2_body(["Hello"], max_tokens=-1)).status_code == 400
    # A request is counted as its last byte goes out, and leaves the in-flight gauge when
    # its handler returns, just after the client has read the answer: wait for both.
    deadline = time.monotonic() + 5
    while True:
        after = http.get("/metrics").text
        settled = all(line.endswith(" 0.0") for line in after.splitlines() if line.startswith(
            ("kserve_llm_requests_in_flight{", "kserve_llm_engine_requests_in_flight{")))
        if (_delta(before, after, "kserve_llm_requests_total", protocol="v2-rest",
                   outcome="client_error") >= 1 and settled) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "vllm:" in after, "vLLM's engine series are missing"
    # KServe's own series, as the README says (its model wrapper times v2 infer and :predict)
    assert _delta(before, after, "request_predict_seconds_count") >= 1
    for proto in ("v2-rest", "v2-generate", "openai", "v1-rest", "v2-grpc"):
        assert _delta(before, after, "kserve_llm_requests_total", model=MODEL, protocol=proto,
                      outcome="success") == 1, proto
        assert _delta(before, after, "kserve_llm_generation_tokens_total",
                      protocol=proto) == 5, proto
        assert _delta(before, after, "kserve_llm_time_to_first_token_seconds_count",
                      protocol=proto) == 1, proto
        assert _delta(before, after, "kserve_llm_time_per_output_token_seconds_count",
                      protocol=proto) == 1, proto
        assert _delta(before, after, "kserve_llm_prompt_tokens_total", protocol=proto) >= 1
    assert _delta(before, after, "kserve_llm_requests_total", protocol="v2-rest",
                  outcome="client_error") == 1
    # every in-flight gauge is back to 0 once the requests are answered
    for line in after.splitlines():
        if line.startswith(("kserve_llm_requests_in_flight{",
                            "kserve_llm_engine_requests_in_flight{")):
            assert line.endswith(" 0.0"), line
