"""Health that tells the truth: kill the engine process, readiness and liveness turn false.

It kills the engine of the session's LoRA server (``lora_server``), as that server's last test
(``destroys``): one engine start fewer than a server of its own. Requests carry its key."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import grpc
import httpx
import psutil
import pytest

from tests.conftest import LORA_KEY
from tests.support.metrics import labelled_sum
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

LONG = {"max_tokens": 1000, "ignore_eos": True}
AUTH = {"authorization": f"Bearer {LORA_KEY}"}


def _in_flight_requests(url: str, grpc_port: int, results: dict) -> list[threading.Thread]:
    """Long requests on each protocol, running when the engine dies."""

    def stream() -> None:
        events = results["generate_stream"] = []  # filled as events arrive
        with httpx.stream("POST", url + "/v2/models/smollm2/generate_stream", timeout=60,
                          headers=AUTH, json={"text_input": "Tell me a story", "parameters": LONG}) as r:
            results["generate_stream_status"] = r.status_code
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))

    def post(name: str, path: str, body: dict) -> None:
        results[name] = httpx.post(url + path, json=body, timeout=60, headers=AUTH)

    def grpc_call() -> None:
        from tests.runtime.test_grpc import grpc_infer

        try:
            results["grpc"] = grpc_infer(grpc_port, ["A story"], LONG, timeout=60,
                                         metadata=[("authorization", AUTH["authorization"])])
        except Exception as exc:  # the expected end: a gRPC error status
            results["grpc"] = exc

    def openai_stream() -> None:
        events = results["openai_stream"] = []
        with httpx.stream("POST", url + "/openai/v1/completions", timeout=60, headers=AUTH,
                          json={"model": "smollm2", "prompt": "A story", "stream": True,
                                **LONG}) as r:
            results["openai_stream_status"] = r.status_code
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    events.append(json.loads(line[6:]))

    def triton_stream() -> None:
        from tests.runtime.test_triton_stream import run_client

        try:
            results["triton_stream"] = run_client(
                f"127.0.0.1:{grpc_port}", "stream", [{
                    "prompt": "A story", "inputs": {"stream": True}, "parameters": LONG}],
                headers=AUTH)
        except BaseException as exc:  # recorded: the client may fail in its own way
            results["triton_stream"] = exc

    threads = [threading.Thread(target=stream), threading.Thread(target=openai_stream),
               threading.Thread(target=triton_stream),
               threading.Thread(target=post, args=("generate", "/v2/models/smollm2/generate",
                                                   {"text_input": "A story", "parameters": LONG})),
               threading.Thread(target=post, args=("infer", "/v2/models/smollm2/infer", {
                   "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1],
                               "data": ["A story"]}], "parameters": LONG})),
               threading.Thread(target=post, args=("openai", "/openai/v1/completions", {
                   "model": "smollm2", "prompt": "A story", **LONG})),
               threading.Thread(target=grpc_call)]
    for t in threads:
        t.start()
    return threads


@pytest.mark.destroys("lora_server")
def test_engine_death_turns_ready_and_live_false(lora_server: ServerProcess) -> None:
    server = lora_server
    try:
        url = server.url
        assert httpx.get(url + "/v2/health/ready").status_code == 200
        assert httpx.get(url + "/v2/health/live").status_code == 200
        engine = [p for p in psutil.Process(server.pid).children(recursive=True)
                  if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()]
        if not engine:  # the engine core's process title is set by vLLM; fall back to any child
            engine = psutil.Process(server.pid).children(recursive=True)
        assert engine, "no engine process found"
        results: dict = {}
        threads = _in_flight_requests(url, server.grpc_port, results)
        before = httpx.get(url + "/metrics").text
        # Kill only once all seven run and the streams have sent output, so that the streams'
        # case is the mid-stream one (an error after a 200, or after the first response).
        deadline = time.monotonic() + 60
        running = ""
        while time.monotonic() < deadline:
            running = httpx.get(url + "/metrics").text
            if ('kserve_llm_engine_requests_in_flight{model="smollm2"} 7.0' in running
                    and results.get("generate_stream") and results.get("openai_stream")):
                break
            time.sleep(0.1)
        else:
            lines = [x for x in running.splitlines() if "in_flight{" in x]
            raise AssertionError(f"the seven requests never ran together: {lines}, "
                                 f"{results}")
        time.sleep(2.0)  # the gRPC stream (read by a separate client) has answered too
        for p in engine:
            os.kill(p.pid, signal.SIGKILL)
        killed = time.monotonic()
        ready = live = True
        while time.monotonic() - killed < 5 and (ready or live):
            ready = httpx.get(url + "/v2/health/ready").status_code == 200
            live = httpx.get(url + "/v2/health/live").status_code == 200
            time.sleep(0.05)
        took = time.monotonic() - killed
        assert not ready and not live, "health still green 5 s after the engine died"
        # README: within two seconds (one --health_check_interval, default 1 s, and the
        # probe's own time on a loaded machine).
        assert took < 2.0, f"health turned false {took:.2f} s after the engine died"
        assert httpx.get(url + "/v1/models/smollm2").status_code == 503
        r = httpx.post(url + "/v2/models/smollm2/generate", json={"text_input": "hi"},
                       headers=AUTH)
        assert r.status_code == 503
        # Requests in flight when the engine died end (none hangs): 5xx, or an error event.
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "a request hung after the engine died"
        assert results["generate_stream_status"] == 200
        assert "error" in results["generate_stream"][-1], results["generate_stream"][-1:]
        for name in ("generate", "infer", "openai"):
            assert results[name].status_code >= 500, (name, results[name].text)
        assert isinstance(results["grpc"], grpc.RpcError), results["grpc"]
        assert results["grpc"].code() in (grpc.StatusCode.INTERNAL,
                                          grpc.StatusCode.UNAVAILABLE), results["grpc"]
        assert results["openai_stream_status"] == 200
        assert "error" in results["openai_stream"][-1], results["openai_stream"][-1:]
        # A stream that failed after its 200 (or its first gRPC response) is a server error
        # in the runtime's count, on every streaming protocol; none counts as a success.
        def rose(after: str, protocol: str, outcome: str) -> float:
            labels = {"model": "smollm2", "protocol": protocol, "outcome": outcome}
            return labelled_sum(after, "kserve_llm_requests_total", **labels) - \
                labelled_sum(before, "kserve_llm_requests_total", **labels)

        streaming = ("openai", "v2-generate", "v2-grpc")
        deadline = time.monotonic() + 10  # a count lands as its request's handler ends
        while True:
            after = httpx.get(url + "/metrics").text
            if all(rose(after, p, "server_error") >= 1 for p in streaming) or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for protocol in streaming:
            lines = [x for x in after.splitlines() if x.startswith("kserve_llm_requests_total")]
            assert rose(after, protocol, "server_error") >= 1, (protocol, lines)
            assert rose(after, protocol, "success") == 0, (protocol, lines)
    finally:
        server.stop()
