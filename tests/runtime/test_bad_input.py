"""Bad input on v2 REST, the generate extension and KServe v1 ``:predict``: a clear 4xx, then
the server still serves.

(OpenAI's bad inputs are in test_openai.py, gRPC's in test_grpc.py.)
"""

from __future__ import annotations

import httpx
import pytest

from tests.runtime.conftest import MODEL, assert_still_serving, v2_body

pytestmark = pytest.mark.slow

LONG = "hello " * 3000  # ~3000 tokens: longer than the test server's 2048-token context
# JSON nested far past any decoder's recursion limit (a RecursionError was a 500), and a value
# past the runtime's bound (runtime.limits.MAX_JSON_DEPTH, 128) as a v2 parameter (KServe
# refuses a list there itself).
DEEP = b"[" * 50_000 + b"]" * 50_000
NESTED = [[[]]]
for _ in range(140):
    NESTED = [NESTED]

INFER_CASES = [
    ("malformed json", b"{nope", 400, "malformed JSON"),
    ("unknown model", None, 404, "does not exist"),
    ("wrong datatype", {"inputs": [{"name": "text_input", "datatype": "FP32", "shape": [1],
                                    "data": [1.0]}]}, 400, "BYTES"),
    ("shape mismatch", {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [3],
                                    "data": ["a"]}]}, 400, "shape"),
    ("missing text_input", {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1],
                                        "data": ["a"]}]}, 400, "text_input"),
    ("empty batch", v2_body([]), 400, "empty batch"),
    ("wrong parameter type", v2_body(["a"], max_tokens="many"), 400, "max_tokens"),
    ("unknown parameter", v2_body(["a"], max_token=3), 400, "max_token"),
    ("negative max_tokens", v2_body(["a"], max_tokens=-1), 400, "max_tokens"),
    ("negative temperature", v2_body(["a"], temperature=-0.5), 400, "temperature"),
    ("prompt longer than context", v2_body([LONG]), 400, "context"),
    ("oversized body", b"{" + b" " * (9 * 1024 * 1024) + b"}", 413, "exceeds"),
    ("deeply nested body", b'{"inputs": ' + DEEP + b"}", 400, "parsing"),  # KServe's own
    ("deeply nested parameter", v2_body(["a"], stop=NESTED), 400, "parameters.stop"),
]


@pytest.mark.parametrize("name,body,status,needle", INFER_CASES, ids=[c[0] for c in INFER_CASES])
def test_v2_infer_bad_input(http: httpx.Client, name: str, body, status: int,
                            needle: str) -> None:
    model = "nope" if name == "unknown model" else MODEL
    if body is None:
        body = v2_body(["a"])
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = http.post(f"/v2/models/{model}/infer", headers={"content-type": "application/json"},
                  **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert_still_serving(http)


def assert_refused_in_json(http: httpx.Client, path: str, body, status: int,
                           needle: str) -> None:
    """POST ``body`` (bytes as they are, else JSON): ``status`` with a JSON ``{"error": ...}``
    holding ``needle``; then the server still answers a real question."""
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = http.post(path, headers={"content-type": "application/json"}, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert needle in r.json()["error"], r.text
    assert_still_serving(http)


GENERATE_CASES = [
    ("malformed json", b"{nope", 400, "malformed JSON"),
    ("unknown model", {"text_input": "a"}, 404, "does not exist"),
    ("missing text_input", {"parameters": {"max_tokens": 2}}, 400, "text_input"),
    ("text_input not a string", {"text_input": ["a", "b"]}, 400, "string"),
    ("wrong parameter type", {"text_input": "a", "parameters": {"max_tokens": "many"}}, 400,
     "max_tokens"),
    ("negative max_tokens", {"text_input": "a", "parameters": {"max_tokens": -1}}, 400,
     "max_tokens"),
    ("negative temperature", {"text_input": "a", "parameters": {"temperature": -1}}, 400,
     "temperature"),
    ("prompt longer than context", {"text_input": LONG}, 400, "context"),
    ("oversized body", b"{" + b" " * (9 * 1024 * 1024) + b"}", 413, "exceeds"),
    ("deeply nested body", b'{"text_input": "a", "parameters": {"stop": ' + DEEP + b"}}", 400,
     "nests deeper"),
]


@pytest.mark.parametrize("route", ["generate", "generate_stream"])
@pytest.mark.parametrize("name,body,status,needle", GENERATE_CASES,
                         ids=[c[0] for c in GENERATE_CASES])
def test_generate_bad_input(http: httpx.Client, route: str, name: str, body, status: int,
                            needle: str) -> None:
    model = "nope" if name == "unknown model" else MODEL
    assert_refused_in_json(http, f"/v2/models/{model}/{route}", body, status, needle)


PREDICT_CASES = [
    ("malformed json", b"{nope", 400, "malformed JSON"),
    ("unknown model", {"instances": ["a"]}, 404, "does not exist"),
    ("not an object", ["a"], 400, "JSON object"),
    ("missing instances", {"parameters": {"max_tokens": 2}}, 400, "instances"),
    ("empty instances", {"instances": []}, 400, "instances"),
    ("instances not a list", {"instances": "a"}, 400, "instances"),
    ("instance not a string", {"instances": [{"text": "a"}]}, 400, "strings"),
    ("parameters not an object", {"instances": ["a"], "parameters": [1]}, 400, "parameters"),
    ("wrong parameter type", {"instances": ["a"], "parameters": {"max_tokens": "many"}}, 400,
     "max_tokens"),
    ("unknown parameter", {"instances": ["a"], "parameters": {"max_token": 3}}, 400,
     "max_token"),
    ("negative max_tokens", {"instances": ["a"], "parameters": {"max_tokens": -1}}, 400,
     "max_tokens"),
    ("negative temperature", {"instances": ["a"], "parameters": {"temperature": -1}}, 400,
     "temperature"),
    ("prompt longer than context", {"instances": [LONG]}, 400, "context"),
    ("oversized body", b"{" + b" " * (9 * 1024 * 1024) + b"}", 413, "exceeds"),
    ("deeply nested body", b'{"instances": ' + DEEP + b"}", 400, "nests deeper"),
]


@pytest.mark.parametrize("name,body,status,needle", PREDICT_CASES,
                         ids=[c[0] for c in PREDICT_CASES])
def test_v1_predict_bad_input(http: httpx.Client, name: str, body, status: int,
                              needle: str) -> None:
    model = "nope" if name == "unknown model" else MODEL
    assert_refused_in_json(http, f"/v1/models/{model}:predict", body, status, needle)


# ---- list-valued sampling parameters: capped per request on every protocol (issue 24) ----

# parameter -> (a value one past its default cap, the flag the refusal names)
OVER_CAP = {
    "stop_token_ids": (list(range(1025)), "--max_token_ids"),
    "allowed_token_ids": (list(range(1025)), "--max_token_ids"),
    "logit_bias": ({str(i): -1.0 for i in range(1025)}, "--max_token_ids"),
    "bad_words": ([f"w{i}" for i in range(129)], "--max_bad_words"),
}


def test_list_parameters_are_capped_on_every_protocol(predictor, http: httpx.Client) -> None:
    """One past a cap is a 400 / INVALID_ARGUMENT naming the flag on OpenAI (completions and
    chat), v2 REST and gRPC (Triton's ``sampling_parameters``), generate, generate_stream and
    KServe v1; at the caps (1024 token ids in each list) a request is served."""
    from tests.runtime.test_triton_stream import grpc_url, run_client

    at_cap = {"logit_bias": {str(i): 0.0 for i in range(1024)},
              "allowed_token_ids": list(range(1024)), "stop_token_ids": list(range(1024))}
    r = http.post("/openai/v1/completions", json={
        "model": MODEL, "prompt": "x", "max_tokens": 1, **at_cap})
    assert r.status_code == 200, r.text
    for name, (value, flag) in OVER_CAP.items():
        params = {"max_tokens": 1, name: value}
        answers = {
            "openai": http.post("/openai/v1/completions", json={
                "model": MODEL, "prompt": "x", **params}),
            "openai-chat": http.post("/openai/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": "x"}], **params}),
            "generate": http.post(f"/v2/models/{MODEL}/generate", json={
                "text_input": "x", "parameters": params}),
            "generate_stream": http.post(f"/v2/models/{MODEL}/generate_stream", json={
                "text_input": "x", "parameters": params}),
            "v1": http.post(f"/v1/models/{MODEL}:predict", json={
                "instances": ["x"], "parameters": params}),
        }
        for protocol, r in answers.items():
            assert r.status_code == 400, (name, protocol, r.text)
            error = r.json()["error"]
            message = error["message"] if protocol.startswith("openai") else error
            assert name in message and flag in message, (name, protocol, message)
        triton = [{"prompt": "x", "inputs": {"sampling_parameters": params}}]
        for mode in ("http", "infer"):  # v2 REST and gRPC ModelInfer
            (answer,) = run_client(grpc_url(predictor) if mode == "infer" else
                                   predictor.url.removeprefix("http://"), mode, triton)
            assert flag in answer.get("error", ""), (name, mode, answer)
        ((answer,),) = run_client(grpc_url(predictor), "stream", [
            {**triton[0], "inputs": {**triton[0]["inputs"], "stream": True}}])
        assert flag in answer.get("error", ""), (name, "stream", answer)
    assert_still_serving(http)
