"""API key, overload bound and request limits, on a server started with them configured."""

from __future__ import annotations

import threading
import time

import grpc
import httpx
import pytest

from tests.runtime.conftest import QUESTION, v2_body
from tests.runtime.test_grpc import grpc_infer
from tests.support.server import start_runtime

KEY = "s3cret-key"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def guarded(model_dir: str):
    server = start_runtime(model_dir=model_dir, name="guarded", extra=[
        "--max-model-len=1024", "--max-num-seqs=2", f"--api_key={KEY}",
        "--max_waiting_requests=0", "--max_n=2", "--max_batch_size=2",
        "--max_tokens_limit=800", "--max_stop_sequences=2"])
    # readiness is exempt from the key, so the fixture's health poll worked without it
    try:
        yield server
    finally:
        server.stop()


def test_api_key_required_on_inference_routes(guarded) -> None:
    url = guarded.url
    for path, body in [("/v2/models/smollm2/infer", v2_body(["hi"], max_tokens=2)),
                       ("/v2/models/smollm2/generate", {"text_input": "hi"}),
                       ("/openai/v1/completions", {"model": "smollm2", "prompt": "hi"}),
                       ("/v1/chat/completions", {"model": "smollm2", "messages": []})]:
        r = httpx.post(url + path, json=body)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        r = httpx.post(url + path, json=body, headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401
    assert httpx.get(url + "/v2/models/smollm2").status_code == 401
    for path in ("/v2/health/live", "/v2/health/ready", "/v1/models/smollm2", "/metrics"):
        assert httpx.get(url + path).status_code == 200, path
    r = httpx.post(url + "/openai/v1/chat/completions", headers=AUTH, timeout=60, json={
        "model": "smollm2", "temperature": 0, "max_tokens": 20,
        "messages": [{"role": "user", "content": QUESTION}]})
    assert "Paris" in r.json()["choices"][0]["message"]["content"]


def test_api_key_on_grpc(guarded) -> None:
    with pytest.raises(grpc.RpcError) as err:
        grpc_infer(guarded.grpc_port, ["hi"], {"max_tokens": 2})
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    res = grpc_infer(guarded.grpc_port, [QUESTION],
                     {"max_tokens": 20, "temperature": 0, "apply_chat_template": True},
                     metadata=[("authorization", f"Bearer {KEY}")])
    text = res.outputs[0].data[0]
    assert "Paris" in (text.decode() if isinstance(text, bytes) else text)


@pytest.mark.parametrize("path,body,needle", [
    ("/openai/v1/completions", {"model": "smollm2", "prompt": "hi", "n": 3}, "n=3"),
    ("/openai/v1/completions", {"model": "smollm2", "prompt": ["a", "b", "c"]}, "batch"),
    ("/openai/v1/completions", {"model": "smollm2", "prompt": "hi", "max_tokens": 900},
     "max_tokens"),
    ("/openai/v1/completions", {"model": "smollm2", "prompt": "hi", "stop": ["a", "b", "c"]},
     "stop"),
    ("/v2/models/smollm2/infer", v2_body(["a", "b", "c"]), "batch"),
    ("/v2/models/smollm2/infer", v2_body(["a"], max_tokens=900), "max_tokens"),
    ("/v2/models/smollm2/generate", {"text_input": "a", "parameters": {"max_tokens": 900}},
     "max_tokens"),
    ("/v2/models/smollm2/generate", {"text_input": "a", "parameters": {"stop": ["a", "b", "c"]}},
     "stop"),
])
def test_limits(guarded, path: str, body: dict, needle: str) -> None:
    r = httpx.post(guarded.url + path, json=body, headers=AUTH, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert needle in (err["message"] if isinstance(err, dict) else err)


def _in_flight(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith('kserve_llm_engine_requests_in_flight{model="smollm2"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _occupy(url: str, stop: threading.Event, finished: list[str]) -> None:
    """Stream a long generation until ``stop`` is set (then hang up) or it ends by itself."""
    with httpx.stream("POST", url + "/v2/models/smollm2/generate_stream", headers=AUTH,
                      timeout=180, json={"text_input": "Tell me a long story",
                                         "parameters": {"max_tokens": 800,
                                                        "ignore_eos": True}}) as r:
        assert r.status_code == 200
        for _line in r.iter_lines():
            if stop.is_set():
                return
    finished.append("finished")


def _while_full(url: str, check) -> object:
    """Run ``check`` while two long streams fill the engine (``--max-num-seqs=2``).

    Why the retries: how long the occupying streams last depends on the machine; a check
    is conclusive only if neither had finished when its answer came back, so an
    inconclusive round is repeated rather than judged. The occupiers are then dropped,
    which aborts their engine requests (the disconnect feature), so a round is short.
    """
    rounds = []
    for _ in range(4):
        finished: list[str] = []
        stop = threading.Event()

        threads = [threading.Thread(target=_occupy, args=(url, stop, finished))
                   for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        seen = [0.0]
        while time.monotonic() < deadline and not finished and seen[-1] < 2:
            time.sleep(0.1)
            seen.append(_in_flight(url))
        result = check() if seen[-1] >= 2 and not finished else None
        conclusive = result is not None and not finished
        stop.set()
        for t in threads:
            t.join(180)
        deadline = time.monotonic() + 30
        while _in_flight(url) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        if conclusive:
            return result
        rounds.append((seen[-5:], finished))
    pytest.fail(f"the engine was never full for a whole check: {rounds}")


def test_overload_gets_429_with_retry_after(guarded) -> None:
    url = guarded.url
    grpc_infer(guarded.grpc_port, ["hi"], {"max_tokens": 1},  # imports the client now
               metadata=[("authorization", f"Bearer {KEY}")])

    def post(path: str, body: dict):
        return lambda: httpx.post(url + path, headers=AUTH, json=body, timeout=60)

    r = _while_full(url, post("/v2/models/smollm2/generate",
                              {"text_input": "hi", "parameters": {"max_tokens": 2}}))
    assert r.status_code == 429 and r.headers["retry-after"]
    assert "overloaded" in r.json()["error"]
    r = _while_full(url, post("/openai/v1/completions",
                              {"model": "smollm2", "prompt": "hi", "max_tokens": 2}))
    assert r.status_code == 429 and r.headers["retry-after"]
    r = _while_full(url, post("/v2/models/smollm2/infer", v2_body(["hi"], max_tokens=2)))
    assert r.status_code == 429 and r.headers["retry-after"]

    def grpc_check() -> grpc.RpcError | str:
        try:
            grpc_infer(guarded.grpc_port, ["hi"], {"max_tokens": 2},
                       metadata=[("authorization", f"Bearer {KEY}")])
        except grpc.RpcError as exc:
            return exc
        return "answered"

    err = _while_full(url, grpc_check)
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    metrics = httpx.get(url + "/metrics").text
    rejected = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("kserve_llm_requests_total") and 'outcome="rejected"' in line)
    assert rejected >= 4
    assert _in_flight(url) == 0
