"""/metrics carries vLLM's engine series and the runtime's per-protocol series."""

from __future__ import annotations

import httpx

from tests.runtime.conftest import MODEL, v2_body


def _value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_by_protocol(http: httpx.Client) -> None:
    before = http.get("/metrics").text
    http.post(f"/v2/models/{MODEL}/infer", json=v2_body(["Hello"], max_tokens=5, ignore_eos=True))
    http.post(f"/v2/models/{MODEL}/generate",
              json={"text_input": "Hello", "parameters": {"max_tokens": 5, "ignore_eos": True}})
    http.post("/openai/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 5,
                                              "ignore_eos": True})
    http.post(f"/v2/models/{MODEL}/infer", json=v2_body(["Hello"], max_tokens=-1))
    after = http.get("/metrics").text
    assert "vllm:" in after, "vLLM's engine series are missing"
    for proto in ("v2-rest", "v2-generate", "openai"):
        d = (_value(after, "kserve_llm_requests_total", protocol=proto, outcome="success")
             - _value(before, "kserve_llm_requests_total", protocol=proto, outcome="success"))
        assert d >= 1, proto
        gen = (_value(after, "kserve_llm_generation_tokens_total", protocol=proto)
               - _value(before, "kserve_llm_generation_tokens_total", protocol=proto))
        assert gen >= 5, proto
        ttft = (_value(after, "kserve_llm_time_to_first_token_seconds_count", protocol=proto)
                - _value(before, "kserve_llm_time_to_first_token_seconds_count", protocol=proto))
        assert ttft >= 1, proto
        assert _value(after, "kserve_llm_time_per_output_token_seconds_count", protocol=proto) >= 1
        assert _value(after, "kserve_llm_prompt_tokens_total", protocol=proto) >= 1
    errors = (_value(after, "kserve_llm_requests_total", protocol="v2-rest", outcome="client_error")
              - _value(before, "kserve_llm_requests_total", protocol="v2-rest",
                       outcome="client_error"))
    assert errors == 1
