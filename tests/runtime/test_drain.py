"""Graceful drain: SIGTERM with 16 streamed requests in flight, and a request on every other
protocol (OpenAI, v2 REST infer, gRPC ModelInfer, ModelStreamInfer); a second signal stops at
once.

Each test ends a shared server as its last test (``destroys``): the drain drains the session's
predictor (started with ``--drain_timeout=120``), the second signal stops the guarded server
(``--drain_timeout=300``, its key on the request). Two engine starts fewer."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import GUARDED_KEY
from tests.runtime.conftest import v2_body
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

STREAMS = 16
MAX_TOKENS = 128  # the streams and OpenAI requests, started together
FIRST_TOKENS = 224  # the three started first, alone for a moment: longer


def _stream(url: str, results: list, i: int, started: threading.Event) -> None:
    body = {"text_input": f"Story number {i}: once upon a time",
            "parameters": {"max_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 0}}
    events = []
    try:
        with httpx.stream("POST", url + "/v2/models/smollm2/generate_stream", json=body,
                          timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    started.set()
        results[i] = events
    except Exception as exc:  # recorded, asserted below
        results[i] = exc


def _openai(url: str, results: list, i: int) -> None:
    try:
        r = httpx.post(url + "/openai/v1/completions", timeout=120, json={
            "model": "smollm2", "prompt": "Count with me: one, two,", "max_tokens": MAX_TOKENS,
            "ignore_eos": True})
        results[i] = r
    except Exception as exc:
        results[i] = exc


def _v2_infer(url: str, results: list, i: int) -> None:
    try:
        results[i] = httpx.post(url + "/v2/models/smollm2/infer", timeout=120, json=v2_body(
            ["Count with me: one, two,"], max_tokens=FIRST_TOKENS, ignore_eos=True))
    except Exception as exc:
        results[i] = exc


def _grpc(port: int, results: list, i: int) -> None:
    from tests.runtime.test_grpc import grpc_infer

    try:
        results[i] = grpc_infer(port, ["Count with me: one, two,"],
                                {"max_tokens": FIRST_TOKENS, "ignore_eos": True})
    except Exception as exc:
        results[i] = exc


def _triton_stream(port: int, results: list, i: int) -> None:
    from tests.runtime.test_triton_stream import run_client

    try:
        results[i] = run_client(f"127.0.0.1:{port}", "stream", [{
            "prompt": "Count with me: one, two,", "inputs": {"stream": True},
            "parameters": {"max_tokens": FIRST_TOKENS, "ignore_eos": True}}])
    except Exception as exc:
        results[i] = exc


def _client_requests_in_flight(url: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith('kserve_llm_requests_in_flight{model="smollm2"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


DRAIN_TIMEOUT = 120  # the predictor's --drain_timeout (tests/conftest.py)


@pytest.mark.destroys("predictor")
def test_sigterm_drains_in_flight_requests(predictor: ServerProcess) -> None:
    server = predictor
    url = server.url
    try:
        results: list = [None] * STREAMS
        oai_results: list = [None] * 2
        started = [threading.Event() for _ in range(STREAMS)]
        others: list = [None] * 3  # v2 REST infer, gRPC ModelInfer, ModelStreamInfer
        # The clients that take longest to start (a tritonclient subprocess, gRPC) go first,
        # with longer answers, so none finishes before the last stream has started.
        first = [threading.Thread(target=_v2_infer, args=(url, others, 0)),
                 threading.Thread(target=_grpc, args=(server.grpc_port, others, 1)),
                 threading.Thread(target=_triton_stream, args=(server.grpc_port, others, 2))]
        threads = first + [threading.Thread(target=_stream, args=(url, results, i, started[i]))
                           for i in range(STREAMS)]
        threads += [threading.Thread(target=_openai, args=(url, oai_results, i))
                    for i in range(2)]
        expected = STREAMS + len(oai_results) + len(others)

        def state() -> str:
            return (f"in flight {_client_requests_in_flight(url)} of {expected}; "
                    f"first three: {others!r}; streams done: "
                    f"{sum(r is not None for r in results)}; OpenAI: {oai_results!r}")

        deadline = time.monotonic() + 120
        for t in first:
            t.start()
        while _client_requests_in_flight(url) < len(first) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _client_requests_in_flight(url) == len(first), state()
        for t in threads[len(first):]:
            t.start()
        # Every stream has received text, and every request is being served: all in flight.
        for ev in started:
            assert ev.wait(max(0.0, deadline - time.monotonic())), "a stream never started"
        while _client_requests_in_flight(url) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _client_requests_in_flight(url) == expected, "not every request started: " + state()
        assert all(r is None for r in results + oai_results + others), \
            "a request finished before SIGTERM: " + state()
        logged = len(server.log())  # what the stop logs comes after this
        os.kill(server.pid, signal.SIGTERM)
        t_term = time.monotonic()
        # Readiness turns false at once, and new requests are refused with 503 + Retry-After.
        ready = httpx.get(url + "/v2/health/ready", timeout=5)
        assert ready.status_code == 503
        late = httpx.post(url + "/v2/models/smollm2/generate", json={"text_input": "hi"},
                          timeout=5)
        assert late.status_code == 503 and "retry-after" in late.headers
        assert httpx.get(url + "/v2/health/live", timeout=5).status_code == 200
        for t in threads:
            t.join(120)
        for i, events in enumerate(results):
            assert isinstance(events, list), f"stream {i} failed: {events!r}"
            assert not any("error" in e for e in events), events
            assert events[-1]["usage"]["completion_tokens"] == MAX_TOKENS
            assert len("".join(e["text_output"] for e in events)) > 0
        for r in oai_results:
            assert isinstance(r, httpx.Response) and r.status_code == 200, r
            assert r.json()["usage"]["completion_tokens"] == MAX_TOKENS
        v2, grpc_answer, [pieces] = others
        assert isinstance(v2, httpx.Response) and v2.status_code == 200, v2
        assert v2.json()["parameters"]["completion_tokens"] == FIRST_TOKENS
        assert not isinstance(grpc_answer, Exception), grpc_answer
        tokens = grpc_answer.parameters["completion_tokens"]  # an InferParameter message
        assert getattr(tokens, "int64_param", tokens) == FIRST_TOKENS
        assert not any("error" in p for p in pieces), pieces
        assert pieces[-1]["parameters"]["completion_tokens"] == FIRST_TOKENS
        server.proc.wait(timeout=DRAIN_TIMEOUT)
        assert time.monotonic() - t_term < DRAIN_TIMEOUT, "did not exit within the drain timeout"
        assert server.proc.returncode == 0, server.log()[-3000:]
        assert "Traceback" not in server.log()[logged:], server.log()[-3000:]  # a clean stop
    finally:
        server.stop()


@pytest.mark.destroys("guarded_server")
def test_second_signal_during_drain_stops_at_once(guarded_server: ServerProcess) -> None:
    """README: "A second signal stops at once": SIGTERM starts a drain that a long stream would
    keep going for minutes; SIGINT then ends the process within seconds, long before
    --drain_timeout."""
    drain_timeout = 300  # the guarded server's (tests/conftest.py)
    server = guarded_server
    url = server.url
    try:
        results: list = [None]
        started = threading.Event()
        body = {"text_input": "Tell me a very long story",  # within its 1024-token context
                "parameters": {"max_tokens": 800, "ignore_eos": True}}

        def stream() -> None:
            events = []
            try:
                with httpx.stream("POST", url + "/v2/models/smollm2/generate_stream", json=body,
                                  headers={"authorization": f"Bearer {GUARDED_KEY}"},
                                  timeout=httpx.Timeout(drain_timeout)) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: "):
                            events.append(json.loads(line[6:]))
                            started.set()
                results[0] = events
            except Exception as exc:  # the server goes away mid-stream: expected
                results[0] = exc

        thread = threading.Thread(target=stream, daemon=True)
        thread.start()
        assert started.wait(120), "the stream never started"
        logged = len(server.log())  # what the stop logs comes after this
        os.kill(server.pid, signal.SIGTERM)
        # draining (readiness false, the stream still running), not stopped
        deadline = time.monotonic() + 10
        while httpx.get(url + "/v2/health/ready", timeout=5).status_code != 503:
            assert time.monotonic() < deadline, "SIGTERM did not start a drain"
            time.sleep(0.1)
        time.sleep(1.0)
        assert server.proc.poll() is None, "the first signal stopped the process"
        assert results[0] is None, "the stream finished: nothing kept the drain going"
        os.kill(server.pid, signal.SIGINT)
        t_int = time.monotonic()
        server.proc.wait(timeout=30)
        stopped_after = time.monotonic() - t_int
        assert stopped_after < 15, f"exited {stopped_after:.1f} s after the second signal"
        # cut short, still no traceback (uvicorn skips the lifespan shutdown: runtime.protocol.gate)
        assert "Traceback" not in server.log()[logged:], server.log()[-3000:]
        thread.join(30)
        events = results[0]
        # the stream was cut, not completed: it ends in an error or without its last event
        assert isinstance(events, Exception) or not events or \
            "usage" not in events[-1], events[-1:]
    finally:
        server.stop()
