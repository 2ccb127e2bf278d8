"""A client that goes away has its engine requests aborted within a second, on every protocol.

Reads the runtime's engine in-flight gauge and vLLM's running-requests gauge back to 0.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from tests.runtime.conftest import MODEL, v2_body

pytestmark = pytest.mark.slow

LONG = {"max_tokens": 1000, "ignore_eos": True, "temperature": 0}


def _gauge(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait_engine(url: str, predicate, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    value = -1.0
    while time.monotonic() < deadline:
        value = _gauge(httpx.get(url + "/metrics").text, "kserve_llm_engine_requests_in_flight")
        if predicate(value):
            return value
        time.sleep(0.1)
    return value


def _assert_aborted(url: str) -> None:
    t = time.monotonic()
    value = _wait_engine(url, lambda v: v == 0, 5)
    assert value == 0, "engine request still running after the client left"
    assert time.monotonic() - t < 1.5, "abort took more than 1.5 s"
    text = ""
    for _ in range(20):  # vLLM updates its gauge on the next engine step
        text = httpx.get(url + "/metrics").text
        if _gauge(text, "vllm:num_requests_running{") == 0:
            break
        time.sleep(0.1)
    assert _gauge(text, "vllm:num_requests_running{") == 0


def _drop_after_start(url: str, path: str, body: dict, stream: bool) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            if stream:
                async with client.stream("POST", path, json=body) as r:
                    async for _ in r.aiter_lines():
                        break  # first event arrived: generation is running; hang up
            else:
                task = asyncio.ensure_future(client.post(path, json=body))
                while _gauge((await client.get("/metrics")).text,
                             "kserve_llm_engine_requests_in_flight") < 1:
                    await asyncio.sleep(0.05)
                task.cancel()  # closes the connection mid-request
                with pytest.raises(asyncio.CancelledError):
                    await task

    asyncio.run(go())


CASES = {
    "openai-stream": ("/openai/v1/completions",
                      {"model": MODEL, "prompt": "Tell me a story", "stream": True, **LONG}, True),
    "openai": ("/openai/v1/completions", {"model": MODEL, "prompt": "Tell me a story", **LONG},
               False),
    "generate_stream": (f"/v2/models/{MODEL}/generate_stream",
                        {"text_input": "Tell me a story", "parameters": LONG}, True),
    "generate": (f"/v2/models/{MODEL}/generate",
                 {"text_input": "Tell me a story", "parameters": LONG}, False),
    "v2-infer": (f"/v2/models/{MODEL}/infer", v2_body(["Tell me a story", "Go on"], **LONG),
                 False),
    "responses-stream": ("/v1/responses", {"model": MODEL, "input": "Tell me a story",
                                           "stream": True, "max_output_tokens": 1000,
                                           "ignore_eos": True, "temperature": 0}, True),
    "responses": ("/openai/v1/responses", {"model": MODEL, "input": "Tell me a story",
                                           "max_output_tokens": 1000, "ignore_eos": True,
                                           "temperature": 0}, False),
    # Anthropic's request has no ignore_eos: a long story is long enough to be cut
    "messages-stream": ("/v1/messages", {"model": MODEL, "max_tokens": 1000, "stream": True,
                                         "messages": [{"role": "user",
                                                       "content": "Tell me a long story"}]},
                        True),
    "messages": ("/v1/messages", {"model": MODEL, "max_tokens": 1000, "messages": [
        {"role": "user", "content": "Tell me a long story"}]}, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_disconnect_aborts(predictor, case: str) -> None:
    assert _wait_engine(predictor.url, lambda v: v == 0, 30) == 0, "engine busy before the test"
    path, body, stream = CASES[case]
    _drop_after_start(predictor.url, path, body, stream)
    _assert_aborted(predictor.url)


def test_grpc_cancel_aborts(predictor) -> None:
    import grpc

    from tests.runtime.test_grpc import grpc_infer

    assert _wait_engine(predictor.url, lambda v: v == 0, 30) == 0
    with pytest.raises(grpc.RpcError) as err:
        # A deadline shorter than the generation: the client cancels the RPC.
        grpc_infer(predictor.grpc_port, ["Tell me a story"],
                   {"max_tokens": 1000, "ignore_eos": True}, timeout=1.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _assert_aborted(predictor.url)


def test_request_id_on_responses(http: httpx.Client) -> None:
    r = http.post(f"/v2/models/{MODEL}/generate", json={"text_input": "hi",
                                                        "parameters": {"max_tokens": 1}},
                  headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = http.post(f"/v2/models/{MODEL}/infer", json=v2_body(["hi"], max_tokens=1))
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
