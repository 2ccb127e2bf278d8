"""API key, overload bound and request limits, on the session's guarded server
(``guarded_server`` in tests/conftest.py, which the explainer's key tests share).

The same server also carries vLLM's listener flags and ``--enable-log-requests`` (ignored with a
warning / vLLM's request logging on): one engine start fewer than a server of their own."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest

from runtime.routes import OPERATOR_PATHS
from tests.conftest import GUARDED_KEY, GUARDED_MAX_CONNECTIONS, GUARDED_OPERATOR_KEY
from tests.runtime.conftest import QUESTION, v2_body
from tests.runtime.test_grpc import grpc_infer
from tests.support.metrics import metric_sum
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

KEY = GUARDED_KEY
AUTH = {"authorization": f"Bearer {KEY}"}
OPERATOR = {"authorization": f"Bearer {GUARDED_OPERATOR_KEY}"}  # operator routes only
DEFAULT_MAX_TOKENS = 5  # the guarded server's --default_max_tokens


@pytest.fixture(scope="module")
def guarded(guarded_server: ServerProcess) -> ServerProcess:
    """The session's guarded server (tests/conftest.py: its flags)."""
    return guarded_server


@pytest.fixture(scope="module")
def key_file(guarded_key_file: Path) -> Path:
    return guarded_key_file


def test_listener_flags_are_ignored_with_a_warning_and_log_requests_logs(guarded) -> None:
    """--host/--port are vLLM's listener flags: ignored (the ModelServer listens on
    --http_port), with a warning; vLLM's --enable-log-requests turns its request logging on
    (off by default: tests/runtime/test_documented.py checks no prompt is logged)."""
    secret = "quokka-lighthouse-4411"
    r = httpx.post(guarded.url + "/v2/models/smollm2/generate", timeout=120, headers=AUTH,
                   json={"text_input": secret, "parameters": {"max_tokens": 2}})
    assert r.status_code == 200, r.text
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{guarded.vllm_port}/v2/health/ready", timeout=5)
    log = guarded.log()
    assert "ignoring vLLM's --port" in log and "ignoring vLLM's --host" in log
    # vLLM 0.32 logs each request's parameters at INFO (the prompt only at DEBUG).
    assert "Received request" in log, "--enable-log-requests: vLLM logs the request"
    assert secret not in log


@pytest.mark.parametrize("prompts,params,flag", [
    (["a", "b", "c"], {"max_tokens": 2}, "--max_batch_size"),
    (["a"], {"max_tokens": 900}, "--max_tokens_limit"),
    (["a"], {"max_tokens": 900.0}, "--max_tokens_limit"),  # sent as the string "900.0"
])
def test_grpc_limits_name_their_flag(guarded, prompts: list[str], params: dict,
                                     flag: str) -> None:
    """The limits hold on gRPC too: INVALID_ARGUMENT naming the flag."""
    with pytest.raises(grpc.RpcError) as err:
        grpc_infer(guarded.grpc_port, prompts, params,
                   metadata=[("authorization", f"Bearer {KEY}")])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert flag in err.value.details()


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


@pytest.mark.parametrize("path,body,flag", [
    # Values of another JSON type that vLLM coerces are bounded like the number they mean.
    ("/openai/v1/chat/completions", {"model": "smollm2", "n": "3",
                                     "messages": [{"role": "user", "content": "hi"}]}, "--max_n"),
    ("/openai/v1/chat/completions", {"model": "smollm2", "n": 3.0,
                                     "messages": [{"role": "user", "content": "hi"}]}, "--max_n"),
    ("/openai/v1/completions", {"model": "smollm2", "prompt": "hi", "n": "3"}, "--max_n"),
    ("/openai/v1/completions", {"model": "smollm2", "prompt": "hi", "max_tokens": "100000"},
     "--max_tokens_limit"),
    ("/openai/v1/chat/completions", {"model": "smollm2", "max_completion_tokens": "900",
                                     "messages": [{"role": "user", "content": "hi"}]},
     "--max_tokens_limit"),
    ("/v2/models/smollm2/generate", {"text_input": "a", "parameters": {"max_tokens": "900"}},
     "--max_tokens_limit"),
    ("/v2/models/smollm2/infer", v2_body(["a"], max_tokens=900.0), "--max_tokens_limit"),
    ("/v1/models/smollm2:predict", {"instances": ["a", "b", "c"]}, "--max_batch_size"),
])
def test_limits_apply_to_validated_values(guarded, path: str, body: dict, flag: str) -> None:
    r = httpx.post(guarded.url + path, json=body, headers=AUTH, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert flag in (err["message"] if isinstance(err, dict) else err)


def test_requests_without_max_tokens_get_the_server_cap(guarded) -> None:
    """A chat request that omits max_tokens means "up to the context" in vLLM; here it gets
    --default_max_tokens on OpenAI and on v2 (ignore_eos makes the cap the only stop)."""
    r = httpx.post(guarded.url + "/openai/v1/chat/completions", headers=AUTH, timeout=60, json={
        "model": "smollm2", "ignore_eos": True,
        "messages": [{"role": "user", "content": "Tell me a long story"}]})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == DEFAULT_MAX_TOKENS
    assert r.json()["choices"][0]["finish_reason"] == "length"
    r = httpx.post(guarded.url + "/v2/models/smollm2/generate", headers=AUTH, timeout=60, json={
        "text_input": "Tell me a long story",
        "parameters": {"apply_chat_template": True, "ignore_eos": True}})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == DEFAULT_MAX_TOKENS


def test_grpc_key_on_every_rpc_but_health(guarded) -> None:
    from tests.runtime.test_grpc import grpc_stub

    stub, pb = grpc_stub(guarded.grpc_port)
    auth = [("authorization", f"Bearer {KEY}")]
    for call, request in [(stub.ServerLive, pb.ServerLiveRequest()),
                          (stub.ServerReady, pb.ServerReadyRequest()),
                          (stub.ModelReady, pb.ModelReadyRequest(name="smollm2"))]:
        assert call(request, timeout=10) is not None  # health: no key needed
    for call, request in [(stub.ServerMetadata, pb.ServerMetadataRequest()),
                          (stub.ModelMetadata, pb.ModelMetadataRequest(name="smollm2")),
                          (stub.RepositoryModelLoad,
                           pb.RepositoryModelLoadRequest(model_name="smollm2")),
                          (stub.RepositoryModelUnload,
                           pb.RepositoryModelUnloadRequest(model_name="smollm2"))]:
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, call
        assert "API key" in err.value.details()
    assert stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=auth, timeout=10).name
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="smollm2"), metadata=auth, timeout=10)
    assert meta.inputs[0].name == "text_input"
    with pytest.raises(grpc.RpcError) as err:  # with the key, unloading is still refused
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="smollm2"),
                                   metadata=auth, timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_operator_routes_only_with_the_key(guarded) -> None:
    """--enable_operator_routes serves vLLM's operator routes, and only with the operator key
    (the shared server, without the flag, answers 404: tests/runtime/test_routes_served.py):
    401 without a key, 403 with the inference key, which is not an operator's."""
    r = httpx.post(guarded.url + "/openai/is_scaling_elastic_ep", timeout=30)
    assert r.status_code == 401
    r = httpx.post(guarded.url + "/openai/is_scaling_elastic_ep", headers=AUTH, timeout=30)
    assert r.status_code == 403 and "operator key" in r.json()["error"]["message"], r.text
    r = httpx.post(guarded.url + "/openai/is_scaling_elastic_ep", headers=OPERATOR, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"is_scaling_elastic_ep": False}
    r = httpx.post(guarded.url + "/openai/v1/chat/completions/batch", headers=OPERATOR,
                   timeout=30, json={})
    assert r.status_code == 404  # not an operator route: still outside the allowlist
    r = httpx.post(guarded.url + "/v2/models/smollm2/generate", headers=OPERATOR, timeout=30,
                   json={"text_input": "hi"})
    assert r.status_code == 401  # and the operator key is no inference key


# What vLLM's own app answers each operator path with the operator key, on this server: 404
# from vLLM's router where its own env switch (VLLM_SERVER_DEV_MODE) is off and the route is not
# registered, 200 / 400 where it is. FastAPI's 404 body, not the runtime's own
# (``{"error": ...}``), shows the request passed the allowlist and reached vLLM. vLLM's LoRA
# load/unload are the runtime's repository load/unload (its checks; here, no lora_name: 400).
VLLM_NOT_FOUND = {"detail": "Not Found"}
# /load and /kv_event_sources are vLLM's GET routes, registered whatever the switches: a POST
# reaches them and gets FastAPI's 405.
OPERATOR_ANSWERS = {"/is_scaling_elastic_ep": 200, "/scale_elastic_ep": 400,
                    "/v1/load_lora_adapter": 400, "/v1/unload_lora_adapter": 400,
                    "/load": 405, "/kv_event_sources": 405}
RUNTIME_ANSWERS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")


@pytest.mark.parametrize("path", sorted(OPERATOR_PATHS))
def test_every_operator_route_needs_the_key(guarded, path: str) -> None:
    """Every operator path (LoRA load/unload, sleep/wake, profiling, prefix-cache reset,
    elastic EP) is refused without a key (401) and with the inference key (403); with the
    operator key, the request reaches vLLM's app, which answers as it does without the
    runtime, never a 5xx (LoRA load/unload: the runtime's repository, in OpenAI's error
    shape); and the server keeps serving."""
    r = httpx.post(guarded.url + "/openai" + path, json={}, timeout=30)
    assert r.status_code == 401, r.text
    r = httpx.post(guarded.url + "/openai" + path, json={}, headers=AUTH, timeout=30)
    assert r.status_code == 403, r.text
    r = httpx.post(guarded.url + "/openai" + path, json={}, headers=OPERATOR, timeout=30)
    expected = OPERATOR_ANSWERS.get(path, 404)
    assert r.status_code == expected, (path, r.status_code, r.text)
    if expected == 404:
        assert r.json() == VLLM_NOT_FOUND, (path, r.text)
    if path in RUNTIME_ANSWERS:
        assert "lora_name" in r.json()["error"]["message"], (path, r.text)
    r = httpx.post(guarded.url + "/v2/models/smollm2/generate", headers=AUTH, timeout=60,
                   json={"text_input": "hi", "parameters": {"max_tokens": 1}})
    assert r.status_code == 200, r.text


def test_key_file_rotation_takes_effect_without_restart(guarded, key_file: Path) -> None:
    body = {"text_input": "hi", "parameters": {"max_tokens": 1}}
    url = guarded.url + "/v2/models/smollm2/generate"
    assert httpx.post(url, json=body, headers=AUTH, timeout=60).status_code == 200
    new = {"authorization": "Bearer rotated-key"}
    try:
        key_file.write_text("rotated-key\n")
        assert httpx.post(url, json=body, headers=new, timeout=60).status_code == 200
        assert httpx.post(url, json=body, headers=AUTH, timeout=60).status_code == 401
        # Fail closed: a key file that disappears or empties refuses every request (the
        # key in force before included) until it holds a key again; probes stay open.
        key_file.unlink()
        assert httpx.post(url, json=body, headers=new, timeout=60).status_code == 401
        assert httpx.post(url, json=body, timeout=60).status_code == 401
        assert httpx.get(guarded.url + "/v2/health/ready", timeout=10).status_code == 200
        key_file.write_text("")
        assert httpx.post(url, json=body, headers=new, timeout=60).status_code == 401
        assert httpx.post(url, json=body, headers={"authorization": "Bearer"},
                          timeout=60).status_code == 401
    finally:
        key_file.write_text(KEY + "\n")
    assert httpx.post(url, json=body, headers=AUTH, timeout=60).status_code == 200
    assert "rotated-key" not in guarded.log() and KEY not in guarded.log()
    assert "every request is refused (401)" in guarded.log()


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


def _counted(url: str, series: str, needle: str = "") -> float:
    """The sum of the ``series{...}`` samples whose line contains ``needle``."""
    return metric_sum(httpx.get(url + "/metrics").text, series, needle)


def test_overload_gets_429_with_retry_after(guarded) -> None:
    """Full engine, no waiting room: 429 + Retry-After on HTTP, RESOURCE_EXHAUSTED with a
    ``retry-after`` trailer on gRPC, an in-stream error on ModelStreamInfer (the stream stays
    open), each counted once as ``rejected``; the two occupying streams show as client
    requests in flight."""
    from tests.runtime.test_triton_stream import run_client

    url = guarded.url
    grpc_infer(guarded.grpc_port, ["hi"], {"max_tokens": 1},  # imports the client now
               metadata=[("authorization", f"Bearer {KEY}")])
    rejected = ("kserve_llm_requests_total", 'outcome="rejected"')
    before = _counted(url, *rejected)
    refusals = []  # every refusal seen, conclusive round or not: each is one count

    def post(path: str, body: dict):
        def go() -> httpx.Response:
            r = httpx.post(url + path, headers=AUTH, json=body, timeout=60)
            refusals.extend([r.status_code] if r.status_code == 429 else [])
            return r
        return go

    r = _while_full(url, post("/v2/models/smollm2/generate",
                              {"text_input": "hi", "parameters": {"max_tokens": 2}}))
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert "overloaded" in r.json()["error"]
    r = _while_full(url, post("/openai/v1/completions",
                              {"model": "smollm2", "prompt": "hi", "max_tokens": 2}))
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    r = _while_full(url, post("/v2/models/smollm2/infer", v2_body(["hi"], max_tokens=2)))
    assert r.status_code == 429 and r.headers["retry-after"] == "1"

    def grpc_check() -> grpc.RpcError | str:
        try:
            grpc_infer(guarded.grpc_port, ["hi"], {"max_tokens": 2},
                       metadata=[("authorization", f"Bearer {KEY}")])
        except grpc.RpcError as exc:
            refusals.append(exc.code())
            return exc
        return "answered"

    err = _while_full(url, grpc_check)
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(err.trailing_metadata() or ()).get("retry-after") == "1"

    def stream_check() -> list:
        answers = run_client(f"127.0.0.1:{guarded.grpc_port}", "stream", [
            {"prompt": "hi", "inputs": {"stream": True}, "parameters": {"max_tokens": 2}}],
            headers=AUTH)
        refusals.extend(a for answer in answers for a in answer if "error" in a)
        return answers

    [[answer]] = _while_full(url, stream_check)
    assert "overloaded" in answer.get("error", ""), answer
    in_flight = _while_full(url, lambda: _counted(url, "kserve_llm_requests_in_flight"))
    assert in_flight == 2  # the two occupying streams (a /metrics read is not inference)
    assert _counted(url, *rejected) - before == len(refusals) >= 5, refusals
    assert _in_flight(url) == 0


def test_responses_and_messages_need_the_key_and_keep_the_limits(guarded) -> None:
    """Issue 23's routes on the guarded server: the key (Anthropic's error shape on
    /v1/messages), --max_tokens_limit on max_output_tokens and Anthropic's max_tokens,
    --max_stop_sequences on stop_sequences, --default_max_tokens when Responses gives none."""
    messages = {"model": "smollm2", "max_tokens": 5,
                "messages": [{"role": "user", "content": QUESTION}]}
    r = httpx.post(guarded.url + "/v1/messages", json=messages, timeout=60)
    assert r.status_code == 401, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(guarded.url + "/v1/responses", json={"model": "smollm2", "input": "hi"},
                   headers=OPERATOR, timeout=60)
    assert r.status_code == 401 and r.json()["error"]["code"] == 401, r.text
    r = httpx.post(guarded.url + "/v1/messages", json={**messages, "max_tokens": 801},
                   headers=AUTH, timeout=60)
    assert r.status_code == 400 and "--max_tokens_limit" in r.json()["error"]["message"], r.text
    r = httpx.post(guarded.url + "/v1/messages", headers=AUTH, timeout=60,
                   json={**messages, "stop_sequences": ["a", "b", "c"]})
    assert r.status_code == 400 and "--max_stop_sequences" in r.text, r.text
    r = httpx.post(guarded.url + "/openai/v1/responses", headers=AUTH, timeout=60,
                   json={"model": "smollm2", "input": QUESTION, "max_output_tokens": 801})
    assert r.status_code == 400 and "--max_tokens_limit" in r.text, r.text
    r = httpx.post(guarded.url + "/v1/responses", headers=AUTH, timeout=60,
                   json={"model": "smollm2", "input": QUESTION, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["output_tokens"] == DEFAULT_MAX_TOKENS
    assert r.json()["status"] == "incomplete"  # cut by the server's default cap


def test_connections_past_the_bound_get_503_and_the_server_keeps_serving(guarded) -> None:
    """``--max_connections``: with that many connections open (idle ones count: each holds a
    socket and its buffers), a new request gets uvicorn's 503; once they close, it is
    served. Below the bound, the same request is served while half as many are open."""
    host, port = guarded.url.split("://", 1)[1].split(":")

    def request() -> httpx.Response:
        return httpx.get(guarded.url + "/v2/models/smollm2/ready", headers=AUTH, timeout=10)

    def held(n: int) -> list[socket.socket]:
        return [socket.create_connection((host, int(port)), timeout=10) for _ in range(n)]

    idle = held(GUARDED_MAX_CONNECTIONS // 2)
    try:
        assert request().status_code == 200
        idle += held(GUARDED_MAX_CONNECTIONS - len(idle))
        time.sleep(0.5)  # the server has accepted them all
        refused = request()
        assert refused.status_code == 503, refused.text
        assert refused.text == "Service Unavailable"
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while (r := request()).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)  # the server notices the closed sockets
    assert r.status_code == 200, r.text
    assert "Exceeded concurrency limit" in guarded.log()
