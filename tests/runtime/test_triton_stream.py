"""Triton's interface against the real process: ModelStreamInfer and the vLLM backend's tensors
with tritonclient (gRPC and HTTP), compared with the OpenAI completions answer.

tritonclient.grpc registers the same protobuf package as kserve, so every Triton client runs
in a subprocess (``CLIENT``), driven by a JSON plan and answering JSON lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from tests.runtime.conftest import MODEL
from tests.support import triton_process

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"
SAMPLING = {"temperature": "0", "max_tokens": "12"}  # strings, as Triton clients send them
ALL_OUTPUTS = {"return_finish_reason": True, "return_cumulative_logprob": True,
               "return_num_input_tokens": True, "return_num_output_tokens": True}

CLIENT = """
    import json, queue
    import numpy as np

    plan = json.loads(sys.argv[1])
    mode = plan["mode"]
    if mode == "http":
        import tritonclient.http as t
    else:
        import tritonclient.grpc as t

    def inputs(req):
        out = []
        prompt = [("text_input", req["prompt"])] if req.get("prompt") is not None else []
        for name, value in [*prompt, *req.get("inputs", {}).items()]:
            if isinstance(value, bool):
                i = t.InferInput(name, [1], "BOOL")
                i.set_data_from_numpy(np.array([value], dtype=bool))
            else:
                value = value if isinstance(value, str) else json.dumps(value)
                i = t.InferInput(name, [1], "BYTES")
                i.set_data_from_numpy(np.array([value.encode()], dtype=object))
            out.append(i)
        return out

    def as_dict(result):
        response = result.get_response()
        if mode == "http":
            names = [o["name"] for o in response["outputs"]]
            params = response.get("parameters") or {}
        else:
            names = [o.name for o in response.outputs]
            params = {k: getattr(v, v.WhichOneof("parameter_choice"))
                      for k, v in response.parameters.items()}
        outputs = {}
        for name in names:
            arr = result.as_numpy(name)
            outputs[name] = [v.decode() if isinstance(v, bytes) else v.item()
                             for v in arr.reshape(-1)]
        return {"outputs": outputs, "parameters": params}

    def emit(obj):
        print(json.dumps(obj), flush=True)

    if mode in ("http", "infer"):
        client = t.InferenceServerClient(plan["url"])
        for req in plan["requests"]:
            try:
                emit(as_dict(client.infer("smollm2", inputs(req), headers=plan.get("headers"),
                                          parameters=req.get("parameters"))))
            except Exception as exc:
                emit({"error": str(exc)})
        done()

    responses = queue.Queue()
    client = t.InferenceServerClient(plan["url"])
    client.start_stream(lambda result, error: responses.put((result, error)),
                        headers=plan.get("headers"))
    for n, req in enumerate(plan["requests"]):
        client.async_stream_infer(req.get("model", "smollm2"), inputs(req), request_id=str(n),
                                  parameters=req.get("parameters"))
        got = []
        while True:
            result, error = responses.get(timeout=120)
            if error is not None:
                got.append({"error": str(error)})
                break
            got.append(as_dict(result))
            if mode == "cancel":
                emit({"started": True})
                sys.stdin.readline()
                client.stop_stream(cancel_requests=True)
                done()
            if got[-1]["parameters"].get("triton_final_response"):
                break
        emit(got)
    client.stop_stream()
"""


def run_client(url: str, mode: str, requests: list[dict[str, Any]],
               headers: dict[str, str] | None = None) -> list[Any]:
    """Run ``CLIENT`` on ``requests``; ``headers`` (e.g. the key) go with every call."""
    plan = json.dumps({"url": url, "mode": mode, "requests": requests, "headers": headers})
    out = triton_process.run_client(CLIENT, plan, timeout=280)
    return [json.loads(line) for line in out.stdout.splitlines()]


def grpc_url(predictor) -> str:
    return f"127.0.0.1:{predictor.grpc_port}"


def openai_reference(http: httpx.Client, prompt: str = PROMPT, max_tokens: int = 12
                     ) -> dict[str, Any]:
    r = http.post("/openai/v1/completions", json={
        "model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "logprobs": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    return {"text": choice["text"], "finish_reason": choice["finish_reason"],
            "prompt_tokens": body["usage"]["prompt_tokens"],
            "completion_tokens": body["usage"]["completion_tokens"],
            "logprob": sum(choice["logprobs"]["token_logprobs"])}


def assert_outputs_agree(outputs: dict[str, list], ref: dict[str, Any]) -> None:
    assert outputs["finish_reason"] == [ref["finish_reason"]]
    assert outputs["num_input_tokens"] == [ref["prompt_tokens"]]
    assert outputs["num_output_tokens"] == [ref["completion_tokens"]]
    assert abs(outputs["cumulative_logprob"][0] - ref["logprob"]) < 1e-3


def test_stream_pieces_join_to_the_unstreamed_answer(predictor, http) -> None:
    streamed, unstreamed = run_client(grpc_url(predictor), "stream", [
        {"prompt": PROMPT, "inputs": {"stream": True, "sampling_parameters": SAMPLING,
                                      **ALL_OUTPUTS}},
        {"prompt": PROMPT, "inputs": {"sampling_parameters": SAMPLING, **ALL_OUTPUTS}},
    ])
    assert all("error" not in r for r in streamed + unstreamed), (streamed, unstreamed)
    *pieces, final = streamed
    assert len(pieces) >= 2, "a streamed answer must arrive as several responses"
    assert not any(p["parameters"]["triton_final_response"] for p in pieces)
    assert final["parameters"]["triton_final_response"] is True
    text = "".join(r["outputs"]["text_output"][0] for r in streamed)
    (whole,) = unstreamed
    assert whole["parameters"]["triton_final_response"] is True
    assert text == whole["outputs"]["text_output"][0]
    ref = openai_reference(http)
    assert text == ref["text"]
    # Per response, as Triton's backend: this piece's tokens, the logprob sum so far.
    assert sum(r["outputs"]["num_output_tokens"][0] for r in streamed) == ref["completion_tokens"]
    assert final["outputs"]["finish_reason"] == [ref["finish_reason"]]
    assert final["outputs"]["num_input_tokens"] == [ref["prompt_tokens"]]
    assert abs(final["outputs"]["cumulative_logprob"][0] - ref["logprob"]) < 1e-3
    assert final["parameters"]["finish_reason"] == ref["finish_reason"]
    assert final["parameters"]["completion_tokens"] == ref["completion_tokens"]
    assert_outputs_agree(whole["outputs"], ref)


def test_additional_outputs_agree_with_openai_on_every_transport(predictor, http) -> None:
    ref = openai_reference(http)
    request = {"prompt": PROMPT, "inputs": {"sampling_parameters": SAMPLING, **ALL_OUTPUTS}}
    (grpc_answer,) = run_client(grpc_url(predictor), "infer", [request])
    (http_answer,) = run_client(predictor.url.removeprefix("http://"), "http", [request])
    for answer in (grpc_answer, http_answer):
        assert "error" not in answer, answer
        assert answer["outputs"]["text_output"] == [ref["text"]]
        assert_outputs_agree(answer["outputs"], ref)
        assert answer["parameters"]["finish_reason"] == ref["finish_reason"]
        assert answer["parameters"]["prompt_tokens"] == ref["prompt_tokens"]
        assert answer["parameters"]["completion_tokens"] == ref["completion_tokens"]
    assert grpc_answer["outputs"] == http_answer["outputs"]


def test_exclude_input_in_output_false_returns_prompt_and_answer(predictor, http) -> None:
    ref = openai_reference(http)
    request = {"prompt": PROMPT, "inputs": {"sampling_parameters": SAMPLING,
                                            "exclude_input_in_output": False}}
    (answer,) = run_client(grpc_url(predictor), "infer", [request])
    assert answer["outputs"]["text_output"] == [PROMPT + ref["text"]]
    (streamed,) = run_client(grpc_url(predictor), "stream", [
        {**request, "inputs": {**request["inputs"], "stream": True}}])
    assert "".join(r["outputs"]["text_output"][0] for r in streamed) == PROMPT + ref["text"]


def test_bad_request_on_an_open_stream_leaves_it_usable(predictor, http) -> None:
    ref = openai_reference(http)
    bad, conflict, unknown, good = run_client(grpc_url(predictor), "stream", [
        {"prompt": PROMPT, "inputs": {"stream": True,
                                      "sampling_parameters": {"max_tokens": -1}}},
        {"prompt": PROMPT, "inputs": {"sampling_parameters": {"temperature": 0.5}},
         "parameters": {"temperature": 0.0}},
        {"prompt": PROMPT, "inputs": {"stream": True,
                                      "sampling_parameters": {"tempurature": "0"}}},
        {"prompt": PROMPT, "inputs": {"stream": True, "sampling_parameters": SAMPLING}},
    ])
    assert len(bad) == 1 and "max_tokens" in bad[0]["error"]
    assert len(conflict) == 1 and "temperature" in conflict[0]["error"]
    assert len(unknown) == 1 and "unknown parameter(s) tempurature" in unknown[0]["error"]
    assert "".join(r["outputs"]["text_output"][0] for r in good) == ref["text"]


LONG = "hello " * 3000  # longer than the session predictor's 2048-token context
STREAM_BAD_CASES = [  # the v2 REST bad-input list (test_bad_input.py), as a stream sends it
    ("unknown model", {"prompt": PROMPT, "model": "nope"}, "nope"),
    ("missing text_input", {"prompt": None, "inputs": {"stream": True}}, "text_input"),
    ("wrong parameter type", {"prompt": PROMPT, "parameters": {"max_tokens": "many"}},
     "max_tokens"),
    ("unknown parameter", {"prompt": PROMPT, "parameters": {"max_token": 3}}, "max_token"),
    ("negative max_tokens", {"prompt": PROMPT, "inputs": {
        "sampling_parameters": {"max_tokens": -1}}}, "max_tokens"),
    ("negative temperature", {"prompt": PROMPT, "parameters": {"temperature": -0.5}},
     "temperature"),
    ("prompt longer than context", {"prompt": LONG}, "context"),
    ("not a JSON object", {"prompt": PROMPT, "inputs": {"sampling_parameters": "[1]"}},
     "JSON object"),
]


def test_the_bad_input_list_on_one_stream(predictor, http) -> None:
    """Each bad request gets one in-stream error naming what is wrong; the stream stays open
    and the next good request on it is answered as OpenAI answers it."""
    ref = openai_reference(http)
    answers = run_client(grpc_url(predictor), "stream", [
        *(case for _, case, _ in STREAM_BAD_CASES),
        {"prompt": PROMPT, "inputs": {"stream": True, "sampling_parameters": SAMPLING}}])
    *bad, good = answers
    for (name, _, needle), answer in zip(STREAM_BAD_CASES, bad, strict=True):
        assert len(answer) == 1 and needle in answer[0].get("error", ""), (name, answer)
    assert "".join(r["outputs"]["text_output"][0] for r in good) == ref["text"]


def _engine_in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("kserve_llm_engine_requests_in_flight"))


def test_cancelled_stream_aborts_its_engine_request(predictor) -> None:
    plan = json.dumps({"url": grpc_url(predictor), "mode": "cancel", "requests": [
        {"prompt": PROMPT, "inputs": {"stream": True, "sampling_parameters": {
            "max_tokens": 1000, "ignore_eos": True, "temperature": 0}}}]})
    with subprocess.Popen([sys.executable, "-c", triton_process.client_code(CLIENT), plan],
                          env=triton_process.client_env(280), stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert json.loads(line) == {"started": True}, proc.stderr.read() if proc.stderr else ""
        assert _engine_in_flight(predictor.url) >= 1
        proc.stdin.write("cancel\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    deadline = time.monotonic() + 5
    while _engine_in_flight(predictor.url) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _engine_in_flight(predictor.url) == 0, "engine request still running after cancel"


def test_v2_rest_answers_carry_finish_reason_counts_and_metadata(http) -> None:
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [2],
                        "data": ["Hello", PROMPT]}],
            "parameters": {"max_tokens": 3, "temperature": 0, "ignore_eos": True}}
    r = http.post(f"/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["finish_reason"] == "length,length"
    assert r.json()["parameters"]["completion_tokens"] == 6
    meta = http.get(f"/v2/models/{MODEL}").json()
    assert {i["name"] for i in meta["inputs"]} >= {"text_input", "stream", "sampling_parameters",
                                                  "exclude_input_in_output", *ALL_OUTPUTS}
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "text_output": "BYTES", "finish_reason": "BYTES", "cumulative_logprob": "FP32",
        "num_input_tokens": "UINT32", "num_output_tokens": "UINT32"}
    conflict = {**body, "inputs": [*body["inputs"], {
        "name": "stream", "datatype": "BOOL", "shape": [1], "data": [True]}],
        "parameters": {"stream": False}}
    r = http.post(f"/v2/models/{MODEL}/infer", json=conflict)
    assert r.status_code == 400 and "stream" in r.json()["error"]


def test_grpc_model_metadata_lists_every_tensor(predictor) -> None:
    from tests.runtime.test_grpc import grpc_stub

    stub, pb = grpc_stub(predictor.grpc_port)
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=30)
    assert {i.name for i in meta.inputs} >= {"text_input", "sampling_parameters", *ALL_OUTPUTS}
    assert {o.name for o in meta.outputs} >= {"finish_reason", "num_output_tokens"}


def test_chat_template_stream_agrees_with_openai_chat(predictor, http) -> None:
    question = "What is the capital of France?"
    r = http.post("/openai/v1/chat/completions", json={
        "model": MODEL, "max_tokens": 12, "temperature": 0, "logprobs": True,
        "messages": [{"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    (streamed,) = run_client(grpc_url(predictor), "stream", [{
        "prompt": question, "inputs": {"stream": True, **ALL_OUTPUTS},
        "parameters": {"apply_chat_template": True, "max_tokens": 12, "temperature": 0.0}}])
    assert "".join(p["outputs"]["text_output"][0] for p in streamed) == \
        choice["message"]["content"]
    final = streamed[-1]["outputs"]
    assert final["finish_reason"] == [choice["finish_reason"]]
    assert final["num_input_tokens"] == [body["usage"]["prompt_tokens"]]
    assert sum(p["outputs"]["num_output_tokens"][0] for p in streamed) == \
        body["usage"]["completion_tokens"]
    expected = sum(item["logprob"] for item in choice["logprobs"]["content"])
    assert abs(final["cumulative_logprob"][0] - expected) < 1e-3
