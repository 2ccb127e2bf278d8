"""README claims that need a server configured differently, on one such server: HTTPS
(``--ssl_certfile``/``--ssl_keyfile``), served aliases (extra ``--served-model-name``), the key
from ``$API_KEY``, ``--protect_metrics``, 503 + Retry-After while the engine loads, request ids
on log lines, prompts and outputs not logged, the in-flight gauge, certificate refresh
(``--enable_ssl_refresh``), and the drain's cut-off
(503 on OpenAI and gRPC while draining, the process gone after ``--drain_timeout``)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from deployment.processes import ChildProcess
from tests.runtime.conftest import QUESTION
from tests.support.metrics import metric_sum
from tests.support.server import ServerProcess, engine_env, free_port, runtime_command
from tests.support.tls import fingerprint, rotate_and_wait, self_signed, served_fingerprint

pytestmark = pytest.mark.slow

KEY = "env-key-123"
AUTH = {"authorization": f"Bearer {KEY}"}
SECRET_PROMPT = "zebra-unicorn-7731 tell me a story"
DRAIN_TIMEOUT = 4
# Sent in turn while the engine loads: KServe's generate and OpenAI's completions.
LOADING_PROBES = [("/v2/models/smollm2/generate", {"text_input": "hi"}),
                  ("/openai/v1/completions", {"model": "smollm2", "prompt": "hi"})]


class Started:
    """The server, its HTTPS client, and what was seen while it loaded."""

    def __init__(self, server: ServerProcess, client: httpx.Client,
                 loading: list[httpx.Response], cert: Path, key: Path) -> None:
        self.server, self.client, self.loading = server, client, loading
        self.cert, self.key = cert, key
        self.unanswered = 0


@pytest.fixture(scope="module")
def tls_server(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    http_port, grpc_port = free_port(), free_port()
    server = ServerProcess(
        runtime_command(model_dir=model_dir, http_port=http_port, grpc_port=grpc_port, extra=[
            "--max-model-len=1024", "--served-model-name", "smollm2", "alias-two",
            f"--ssl_certfile={cert}", f"--ssl_keyfile={key}", "--protect_metrics=true",
            f"--drain_timeout={DRAIN_TIMEOUT}", "--enable_ssl_refresh=true"]),
        port=http_port, env=engine_env({"API_KEY": KEY}), name="tls", grpc_port=grpc_port)
    ChildProcess.start(server)  # launch only: the test watches it load
    client = httpx.Client(base_url=f"https://127.0.0.1:{http_port}", verify=str(cert),
                          timeout=120)
    loading: list[httpx.Response] = []
    started = Started(server, client, loading, cert, key)  # its client is replaced on rotation
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            assert server.proc is not None and server.proc.poll() is None, server.log()[-3000:]
            try:
                ready = client.get("/v2/health/ready", timeout=3)
                if ready.status_code == 200:
                    break
                path, body = LOADING_PROBES[len(loading) % 2]
                loading.append(client.post(path, json=body, headers=AUTH, timeout=3))
            except httpx.TransportError:
                started.unanswered += 1  # not listening yet, or a reply slower than 3 s
            time.sleep(0.5)
        else:
            pytest.fail("the HTTPS server never became ready")
        yield started
    finally:
        started.client.close()
        server.stop()


def test_503_with_retry_after_while_the_engine_loads(tls_server: Started) -> None:
    """Requests sent while the engine loads are answered at once, 503 with Retry-After in
    their protocol's shape. (The engine is built in a worker thread, so the event loop keeps
    answering through the minute of start-up; built on the loop, as vLLM's own builder does,
    nothing was answered until the engine was ready.)"""
    loading = tls_server.loading
    assert len(loading) >= 4, f"only {len(loading)} answers while the engine loaded"
    refused = [r for r in loading if r.status_code != 200]
    assert len(refused) >= 4
    for r in loading:
        if r.status_code == 200 and r.json().get("choices", r.json().get("text_output")):
            continue  # sent just as readiness flipped: generated text proves the engine was up
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
        body = r.json()
        if r.request.url.path.startswith("/openai/"):
            assert body["error"]["code"] == 503 and "not ready" in body["error"]["message"]
        else:
            assert "not ready" in body["error"]
    assert {r.request.url.path for r in refused} == {p for p, _ in LOADING_PROBES}
    # ... and each counted once as `rejected` (the first test on this server: nothing else was
    # refused; a request that timed out on the client side may have been counted too)
    metrics = tls_server.client.get("/metrics", headers=AUTH)
    assert metrics.status_code == 200
    counted = metric_sum(metrics.text, "kserve_llm_requests_total", 'outcome="rejected"')
    assert len(refused) <= counted <= len(refused) + tls_server.unanswered, (
        counted, len(refused), tls_server.unanswered)


def test_https_alias_env_key_and_protected_metrics(tls_server: Started) -> None:
    client = tls_server.client
    assert client.get("/openai/v1/models").status_code == 401  # the key came from $API_KEY
    models = client.get("/openai/v1/models", headers=AUTH).json()
    assert {m["id"] for m in models["data"]} >= {"smollm2", "alias-two"}
    for name in ("smollm2", "alias-two"):
        r = client.post("/openai/v1/chat/completions", headers=AUTH, json={
            "model": name, "temperature": 0, "max_tokens": 20,
            "messages": [{"role": "user", "content": QUESTION}]})
        assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["message"]["content"]
        r = client.post(f"/v2/models/{name}/generate", headers=AUTH, json={
            "text_input": QUESTION, "parameters": {"max_tokens": 20, "temperature": 0,
                                                    "apply_chat_template": True}})
        assert r.status_code == 200 and "Paris" in r.json()["text_output"], name
    assert client.get("/metrics").status_code == 401
    metrics = client.get("/metrics", headers=AUTH)
    assert metrics.status_code == 200
    assert 'kserve_llm_requests_in_flight{model="smollm2"} 0.0' in metrics.text
    assert 'kserve_llm_requests_total{model="alias-two"' in metrics.text
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not served on the TLS port
        httpx.get(f"http://127.0.0.1:{tls_server.server.port}/v2/health/ready", timeout=5)


def test_request_ids_on_log_lines_and_no_prompts_logged(tls_server: Started) -> None:
    client = tls_server.client
    r = client.post("/v2/models/smollm2/generate", headers={**AUTH, "x-request-id": "rid-4242"},
                    json={"text_input": SECRET_PROMPT, "parameters": {"max_tokens": 0}})
    assert r.status_code == 400 and r.headers["x-request-id"] == "rid-4242"
    r = client.post("/v2/models/smollm2/generate", headers={**AUTH, "x-request-id": "rid-4343"},
                    json={"text_input": SECRET_PROMPT, "parameters": {"max_tokens": 8}})
    assert r.status_code == 200
    output = r.json()["text_output"].strip()
    time.sleep(0.5)
    log = tls_server.server.log()
    assert "[rid-4242]" in log  # the client error's one line carries the request id
    # KServe's timing lines of a served request carry it too (they showed "-" before)
    timing = [line for line in log.splitlines() if "generate" in line and "kserve.trace" in line]
    assert any("[rid-4343]" in line for line in timing), timing[-4:]
    assert not any(" [-] " in line for line in timing), timing[-4:]
    assert "zebra-unicorn" not in log
    assert len(output) < 8 or output not in log


def _grpc_infer(started: Started, prompt: str, *, secure: bool = True) -> object:
    """ModelInfer with kserve's client, over TLS trusting the server's current certificate
    (``secure``) or in plaintext; the key on the call."""
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def go() -> object:
        client = InferenceGRPCClient(url=f"127.0.0.1:{started.server.grpc_port}",
                                     use_ssl=secure, retries=0, timeout=60,
                                     root_certificates=str(started.cert) if secure else None)
        try:
            return await client.infer(InferRequest(model_name="smollm2", infer_inputs=[
                InferInput("text_input", [1], "BYTES", data=[prompt])],
                parameters={"max_tokens": 20, "temperature": "0.0", "apply_chat_template": True}),
                headers=list(AUTH.items()))
        finally:
            await client.close()

    return asyncio.run(go())


def test_grpc_speaks_tls_with_the_same_certificate(tls_server: Started) -> None:
    """With --ssl_certfile/--ssl_keyfile the gRPC port is TLS too (a bearer key sent to it
    never travels in clear): kserve's client over TLS gets its answer; a plaintext client
    gets none."""
    port = tls_server.server.grpc_port
    assert served_fingerprint(port) == fingerprint(tls_server.cert)

    answer = _grpc_infer(tls_server, QUESTION, secure=True)
    text = answer.outputs[0].data[0]  # type: ignore[attr-defined]
    assert "Paris" in (text.decode() if isinstance(text, bytes) else text), text
    with pytest.raises(grpc.RpcError) as err:
        _grpc_infer(tls_server, QUESTION, secure=False)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_replaced_certificate_files_take_effect(tls_server: Started, tmp_path: Path) -> None:
    """--enable_ssl_refresh in the ServingRuntime mode: new handshakes present the rotated
    certificate, the same process keeps answering (the drain tests below use the new one)."""
    pid = tls_server.server.pid
    new_cert = rotate_and_wait(tls_server.cert, tls_server.key, tls_server.server.port, tmp_path)
    # the gRPC port reloads the same files for its next handshake
    assert served_fingerprint(tls_server.server.grpc_port) == fingerprint(new_cert)
    tls_server.client.close()
    tls_server.client = httpx.Client(base_url=str(tls_server.client.base_url),
                                     verify=str(new_cert), timeout=120)
    r = tls_server.client.get("/v2/health/ready")
    assert r.status_code == 200 and tls_server.server.pid == pid


def _long_stream(client: httpx.Client, events: list[str]) -> None:
    try:
        with client.stream("POST", "/v2/models/smollm2/generate_stream", headers=AUTH, json={
                "text_input": "Tell me a long story",
                "parameters": {"max_tokens": 900, "ignore_eos": True}}) as r:
            for line in r.iter_lines():
                events.append(line)
    except httpx.HTTPError as exc:
        events.append(f"cut: {type(exc).__name__}")


def test_drain_refuses_new_work_and_cuts_off_after_the_timeout(tls_server: Started) -> None:
    """Last in this module: it stops the server."""
    server, client = tls_server.server, tls_server.client
    events: list[str] = []
    streamer = threading.Thread(target=_long_stream, args=(client, events))
    streamer.start()
    deadline = time.monotonic() + 60
    while not any(e.startswith("data:") for e in events) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.proc is not None
    # To the server's process only, as Kubernetes and `docker stop` send it: a signal to the
    # whole process group reaches vLLM's engine processes too, and they stop at once
    # (docs/operations.md, "Graceful drain").
    logged = len(server.log())  # what the stop logs comes after this
    os.kill(server.proc.pid, signal.SIGTERM)
    t0 = time.monotonic()
    time.sleep(0.5)
    r = client.post("/openai/v1/completions", headers=AUTH,
                    json={"model": "smollm2", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 503 and r.headers["retry-after"], r.text
    assert r.json()["error"]["code"] == 503  # OpenAI's shape
    with pytest.raises(grpc.RpcError) as err:  # over TLS: refused by the drain, not the handshake
        _grpc_infer(tls_server, "hi")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "not ready" in (err.value.details() or ""), err.value.details()
    server.proc.wait(timeout=DRAIN_TIMEOUT + 40)
    elapsed = time.monotonic() - t0
    streamer.join(30)
    assert elapsed >= DRAIN_TIMEOUT - 1  # it waited for the stream...
    # ...then stopped at once: the engine's exit grace (2 s), not uvicorn's graceful close,
    # which gave the cut-off stream 5 s more (past a timeout chosen to fit the grace period)
    assert elapsed < DRAIN_TIMEOUT + 5, elapsed
    # ...and cut it off: 900 tokens cannot have finished within the drain timeout
    assert not any('"finish_reason": "length"' in e for e in events), events[-3:]
    # a stop that cuts a stream off logs no traceback (runtime.protocol.gate.lifespan)
    assert "Traceback" not in server.log()[logged:], server.log()[-3000:]
