"""Against the real process: only the route table is served, labels stay bounded, each request
is counted once, client errors are one log line (issue 9's review defects 1, 3, 4 and 5)."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from runtime import routes
from runtime.routes import Kind
from tests.runtime.conftest import MODEL, QUESTION, assert_still_serving
from tests.runtime.test_routes import _concrete, app_routes
from tests.support.app import assemble
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


def vllm_app_routes() -> list[tuple[str, str]]:
    """Every route of vLLM's own OpenAI app (which an earlier version mounted at /openai)."""
    from vllm.entrypoints.launchers.app import build_app

    from runtime.engine.vllm_engine import engine_parser
    from tests.support.server import DEFAULT_MODEL_DIR

    args = engine_parser().parse_args(["--model", str(DEFAULT_MODEL_DIR)])
    return app_routes(build_app(args, ("generate", "embed"), None))


def test_every_route_is_allowlisted_or_404(predictor: ServerProcess, http: httpx.Client) -> None:
    """Every route of the assembled app, and every route vLLM's app would bring (prefixed and
    not), sent to the real server: outside the table the answer is 404, inside never a 5xx."""
    candidates = set(app_routes(assemble().app))
    for method, path in vllm_app_routes():
        candidates |= {(method, "/openai" + path), (method, path)}
    checked = 0
    for method, path in sorted(candidates):
        if method == "HEAD" or "{" in _concrete(path):
            continue
        concrete = _concrete(path)
        kind = routes.classify(routes.unversioned(concrete)).kind
        if kind is Kind.INFERENCE:
            continue  # answered with real work; every inference route has its own tests
        r = http.request(method, concrete, json={} if method == "POST" else None)
        if kind is Kind.UNKNOWN:
            assert r.status_code == 404, (method, concrete, r.status_code, r.text[:200])
        assert r.status_code < 500, (method, concrete, r.status_code, r.text[:200])
        checked += 1
    assert checked > 40
    for path in ("/openai/scale_elastic_ep", "/openai/v1/responses/resp_1/cancel",
                 "/openai/v1/chat/completions/batch", "/openai/generative_scoring",
                 "/openai/load", "/openai/docs", "/openai/openapi.json"):
        r = http.request("GET" if path.endswith(("docs", "json", "load")) else "POST", path,
                         json={"new_data_parallel_size": 1})
        assert r.status_code == 404, (path, r.text)
        assert "no route" in r.json()["error"]["message"]


def _series(http: httpx.Client) -> str:
    return http.get("/metrics").text


def _count(text: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("kserve_llm_requests_total{") and all(
                f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_unknown_model_names_create_no_series(http: httpx.Client) -> None:
    names = [f"random-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    before = _series(http)
    for name in names:
        for path in (f"/v2/models/{name}/generate", f"/v2/models/{name}/infer"):
            r = http.post(path, json={"text_input": "hi"})
            assert r.status_code == 404 and name in r.json()["error"], r.text
        # OpenAI names the model in the body: the same one label (it was counted under the
        # base model before the runtime labelled the call from the body)
        r = http.post("/openai/v1/completions", json={"model": name, "prompt": "hi"})
        assert r.status_code == 404 and name in r.json()["error"]["message"], r.text
    # A route that answers from inside the app (OpenAI's 404) is counted once its answer is
    # sent, so the last count can land just after the client has it: read until it is there.
    deadline = time.monotonic() + 10
    after = _series(http)
    while _count(after, model="_other") - _count(before, model="_other") < 9 \
            and time.monotonic() < deadline:
        time.sleep(0.1)
        after = _series(http)
    assert not any(name in after for name in names)
    assert _count(after, model="_other") - _count(before, model="_other") == 9
    assert _count(after, model="_other", protocol="openai", outcome="client_error") - \
        _count(before, model="_other", protocol="openai", outcome="client_error") == 3


def _hang_up_stream(url: str) -> None:
    with httpx.stream("POST", url + f"/v2/models/{MODEL}/generate_stream", timeout=60,
                      json={"text_input": "Tell me a long story",
                            "parameters": {"max_tokens": 400, "ignore_eos": True}}) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the stream has started; now hang up


def _hang_up_generate(url: str) -> None:
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(url + f"/v2/models/{MODEL}/generate", timeout=httpx.Timeout(60, read=2),
                   json={"text_input": "Tell me a long story",
                         "parameters": {"max_tokens": 400, "ignore_eos": True}})


@pytest.mark.parametrize("hang_up", [_hang_up_stream, _hang_up_generate])
def test_a_disconnect_is_counted_once(http: httpx.Client, predictor: ServerProcess,
                                      hang_up) -> None:
    before = _series(http)
    hang_up(predictor.url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = _series(http)
        if _count(after, protocol="v2-generate") > _count(before, protocol="v2-generate"):
            break
        time.sleep(0.2)
    time.sleep(1.0)  # a second count would come right after the first
    after = _series(http)
    assert _count(after, protocol="v2-generate") - _count(before, protocol="v2-generate") == 1
    assert (_count(after, protocol="v2-generate", outcome="aborted")
            - _count(before, protocol="v2-generate", outcome="aborted")) == 1
    in_flight = [line for line in after.splitlines()
                 if line.startswith("kserve_llm_engine_requests_in_flight{")]
    assert in_flight and all(line.endswith(" 0.0") for line in in_flight), in_flight


def test_kserve_v1_predict_is_served(http: httpx.Client) -> None:
    r = http.post(f"/v1/models/{MODEL}:predict", json={
        "instances": [QUESTION], "parameters": {"max_tokens": 20, "temperature": 0,
                                                "apply_chat_template": True}})
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["predictions"][0]
    r = http.post(f"/v1/models/{MODEL}:predict", json={"inputs": [{"name": "x"}]})
    assert r.status_code == 400 and "/v2/models/{model}/infer" in r.json()["error"]


def test_client_errors_log_one_line_without_traceback(predictor: ServerProcess,
                                                      http: httpx.Client) -> None:
    start = len(predictor.log())
    r = http.post("/v2/models/nosuch/infer", json={"inputs": [
        {"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]})
    assert r.status_code == 404
    r = http.post(f"/v2/models/{MODEL}/infer", content=b'{"inputs": []}')  # no JSON type
    assert 400 <= r.status_code < 500, r.text
    r = http.post(f"/v2/models/{MODEL}/infer", json={"inputs": [
        {"name": "text_input", "datatype": "FP32", "shape": [1], "data": [1.0]}]})
    assert r.status_code == 400
    assert_still_serving(http)
    time.sleep(0.5)
    assert "Traceback" not in predictor.log()[start:]


def test_websocket_is_refused(predictor: ServerProcess, http: httpx.Client) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as err:
        with connect(predictor.url.replace("http", "ws") + "/openai/v1/realtime", open_timeout=10):
            pass
    assert err.value.response.status_code == 403
    assert_still_serving(http)


def test_a_newline_in_a_path_cannot_forge_a_log_line(predictor, http: httpx.Client) -> None:
    """The decoded path of a request is logged with control characters escaped: ``%0a`` in
    a model name stays on the request's own line (security review, finding 8)."""
    marker = f"FORGED-{uuid.uuid4().hex[:8]}"
    r = http.post(f"/v2/models/x%0a{marker}%0d/generate", json={"text_input": "hi"})
    assert r.status_code == 404, r.text
    log = predictor.log()
    assert f"x\\n{marker}\\r" in log, log[-2000:]
    assert not any(line.startswith(marker) for line in log.splitlines())
