"""LoRA adapters as models on every protocol, against the real process and real peft adapters.

Every adapter's greedy output must be, token for token, what transformers + peft produce with
the same adapter; loading and unloading at run time must work on REST and gRPC, refuse bad
folders with a 4xx that says why, and leave the server serving. The adapters are built with
peft (``deployment.adapters``); tritonclient.grpc cannot share a process with kserve, so the
gRPC client runs in a subprocess (``GRPC``).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from runtime.repository import OUTSIDE_ALLOWED_DIRS
from tests.conftest import LORA_KEY, LORA_OPERATOR_KEY
from tests.runtime.conftest import MODEL, QUESTION, v2_body
from tests.runtime.test_generate import stream_events
from tests.support.lora import peft_greedy
from tests.support.server import ServerProcess
from tests.support.triton_process import run_client

pytestmark = pytest.mark.slow

KEY = LORA_KEY  # the inference key: every client's
AUTH = {"authorization": f"Bearer {KEY}"}
OPERATOR_KEY = LORA_OPERATOR_KEY  # the operator key: loads and unloads, nothing else
OPERATOR = {"authorization": f"Bearer {OPERATOR_KEY}"}
PROMPT = "My favourite food is"  # the example adapters change the base model's answer at once
TOKENS = 16
STATIC = ("attn-a", "mlp-b")  # started with the server (--lora-modules, both syntaxes)
DYNAMIC = ("attn-c", "mlp-d")  # loaded at run time

GRPC = """
    import json
    import numpy as np
    import tritonclient.grpc as t
    from tritonclient.utils import InferenceServerException

    url, key, actions = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    client = t.InferenceServerClient(url)
    headers = {"authorization": "Bearer " + key} if key else None
    for act in actions:
        try:
            if act["op"] == "infer":
                i = t.InferInput("text_input", [1], "BYTES")
                i.set_data_from_numpy(np.array([act["prompt"].encode()], dtype=object))
                r = client.infer(act["model"], [i], parameters=act["parameters"],
                                 headers=headers)
                print(json.dumps({"text": r.as_numpy("text_output")[0].decode()}))
            elif act["op"] == "stream":  # ModelStreamInfer, Triton's stream switch on
                import queue
                got = queue.Queue()
                client.start_stream(lambda result, error: got.put((result, error)),
                                    headers=headers)
                i = t.InferInput("text_input", [1], "BYTES")
                i.set_data_from_numpy(np.array([act["prompt"].encode()], dtype=object))
                s = t.InferInput("stream", [1], "BOOL")
                s.set_data_from_numpy(np.array([True], dtype=bool))
                client.async_stream_infer(act["model"], [i, s], parameters=act["parameters"])
                text = ""
                while True:
                    result, error = got.get(timeout=120)
                    if error is not None:
                        client.stop_stream()
                        raise error
                    text += result.as_numpy("text_output")[0].decode()
                    final = result.get_response().parameters.get("triton_final_response")
                    if final is not None and final.bool_param:
                        break
                client.stop_stream()
                print(json.dumps({"text": text}))
            elif act["op"] == "load":
                client.load_model(act["model"], config=act.get("config"), headers=headers)
                print(json.dumps({"ok": True}))
            elif act["op"] == "unload":
                client.unload_model(act["model"], headers=headers)
                print(json.dumps({"ok": True}))
        except InferenceServerException as exc:
            print(json.dumps({"error": exc.message(), "status": exc.status()}))
"""


def grpc(server: ServerProcess, actions: list[dict[str, Any]], key: str = KEY) -> list[dict]:
    out = run_client(GRPC, f"127.0.0.1:{server.grpc_port}", key, json.dumps(actions),
                     timeout=240)
    return [json.loads(line) for line in out.stdout.splitlines()]


# ---- the reference: transformers + peft, greedy ----

@pytest.fixture(scope="module")
def reference(model_dir: str, lora_adapters: dict[str, Path]) -> dict[str, list[int]]:
    """Greedy token ids of ``PROMPT`` for the base model and for each adapter."""
    got = peft_greedy(model_dir, PROMPT, TOKENS, lora_adapters)
    refs = {MODEL if name is None else name: ids for name, ids in got.items()}
    for name in lora_adapters:  # otherwise "equals the adapter's output" proves nothing
        assert refs[name] != refs[MODEL], f"adapter {name} does not change the output"
    return refs


@pytest.fixture(scope="module")
def tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def server(lora_server: ServerProcess) -> ServerProcess:
    """The session's LoRA server (tests/conftest.py): static ``attn-a`` and ``mlp-b``, loading
    on (from the adapter cache and ``lora_allowed_dir``), ``--max_adapters 3``, two adapter
    slots, the inference key ``KEY``, the operator key ``OPERATOR_KEY``, operator routes on."""
    return lora_server


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Any:
    with httpx.Client(base_url=server.url, timeout=120, headers=AUTH) as client:
        yield client


# ---- what each protocol answers for a model name ----

def openai_ids(server: ServerProcess, model: str) -> list[int]:
    client = openai.OpenAI(base_url=server.url + "/openai/v1", api_key=KEY, timeout=120)
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=TOKENS,
                                    temperature=0, extra_body={"return_token_ids": True})
    return list(out.choices[0].token_ids)  # type: ignore[attr-defined]


def v2_text(http: httpx.Client, model: str) -> str:
    r = http.post(f"/v2/models/{model}/infer", json=v2_body([PROMPT], max_tokens=TOKENS,
                                                             temperature=0))
    assert r.status_code == 200, r.text
    assert r.json()["model_name"] == model
    return r.json()["outputs"][0]["data"][0]


def generate_text(http: httpx.Client, model: str) -> str:
    r = http.post(f"/v2/models/{model}/generate", json={
        "text_input": PROMPT, "parameters": {"max_tokens": TOKENS, "temperature": 0}})
    assert r.status_code == 200, r.text
    return r.json()["text_output"]


def grpc_infer(model: str) -> dict[str, Any]:
    return {"op": "infer", "model": model, "prompt": PROMPT,
            "parameters": {"max_tokens": TOKENS, "temperature": 0}}


def generate_stream_text(http: httpx.Client, model: str) -> str:
    """The text of ``generate_stream``'s events, joined; every event names ``model``."""
    events = stream_events(http, {"text_input": PROMPT, "parameters": {
        "max_tokens": TOKENS, "temperature": 0}}, model)
    assert events and all(e["model_name"] == model for e in events), events
    return "".join(e["text_output"] for e in events)


def assert_served_as(server: ServerProcess, http: httpx.Client, model: str,
                     expected: list[int], tokenizer: Any) -> None:
    """OpenAI (token ids), v2 REST, generate, KServe v1 and gRPC (unary and streamed) all
    give ``expected``."""
    text = tokenizer.decode(expected, skip_special_tokens=True)
    assert openai_ids(server, model) == expected, f"OpenAI, model {model}"
    assert v2_text(http, model) == text, f"v2 REST, model {model}"
    assert generate_text(http, model) == text, f"generate, model {model}"
    assert generate_stream_text(http, model) == text, f"generate_stream, model {model}"
    r = http.post(f"/v1/models/{model}:predict", json={
        "instances": [PROMPT], "parameters": {"max_tokens": TOKENS, "temperature": 0}})
    assert r.status_code == 200 and r.json()["predictions"] == [text], f"v1, model {model}"
    assert grpc(server, [grpc_infer(model), {**grpc_infer(model), "op": "stream"}]) == [
        {"text": text}] * 2, f"gRPC ModelInfer and ModelStreamInfer, model {model}"


def assert_not_served(server: ServerProcess, http: httpx.Client, model: str) -> None:
    r = http.post("/openai/v1/completions", json={"model": model, "prompt": PROMPT,
                                                   "max_tokens": 2})
    assert r.status_code == 404 and model in r.json()["error"]["message"], r.text
    for path, body in ((f"/v2/models/{model}/infer", v2_body([PROMPT], max_tokens=2)),
                       (f"/v2/models/{model}/generate", {"text_input": PROMPT})):
        r = http.post(path, json=body)
        assert r.status_code == 404 and model in r.json()["error"], (path, r.text)
    assert http.get(f"/v2/models/{model}").status_code == 404
    assert http.get(f"/v2/models/{model}/ready").status_code == 404
    (answer,) = grpc(server, [grpc_infer(model)])
    assert answer["status"] == "StatusCode.NOT_FOUND" and model in answer["error"], answer


def assert_serving(http: httpx.Client) -> None:
    r = http.post(f"/v2/models/{MODEL}/infer", json=v2_body(
        [QUESTION], max_tokens=16, temperature=0, apply_chat_template=True))
    assert r.status_code == 200 and "Paris" in r.json()["outputs"][0]["data"][0], r.text


def series(http: httpx.Client, model: str) -> dict[str, float]:
    """The runtime's metric samples labelled with ``model``."""
    out = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("kserve_llm_") and f'model="{model}"' in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


# ---- tests ----

def test_adapters_are_listed_as_models(http: httpx.Client) -> None:
    cards = {m["id"]: m for m in http.get("/openai/v1/models").json()["data"]}
    for name in STATIC:
        assert cards[name]["parent"] == MODEL
    index = http.post("/v2/repository/index", json={"ready": True}).json()
    assert {m["name"] for m in index} == {MODEL, *STATIC}
    assert all(m["state"] == "Ready" for m in index)
    for name in STATIC:
        assert http.get(f"/v2/models/{name}").json()["name"] == name
        assert http.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}


@pytest.mark.parametrize("model", [MODEL, *STATIC])
def test_output_equals_transformers_and_peft_on_every_protocol(
        server: ServerProcess, http: httpx.Client, reference: dict[str, list[int]],
        tokenizer: Any, model: str) -> None:
    assert_served_as(server, http, model, reference[model], tokenizer)


def sampled(server: ServerProcess, model: str) -> tuple[list[int], list[dict[int, float]]]:
    """Greedy token ids and, per position, the top-5 alternatives' logprobs."""
    client = openai.OpenAI(base_url=server.url + "/openai/v1", api_key=KEY, timeout=120)
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=TOKENS, temperature=0,
                                    logprobs=5, extra_body={"return_token_ids": True,
                                                            "return_tokens_as_token_ids": True})
    choice = out.choices[0]
    tops = [{int(k.removeprefix("token_id:")): v for k, v in top.items()}
            for top in choice.logprobs.top_logprobs]  # type: ignore[union-attr]
    return list(choice.token_ids), tops  # type: ignore[attr-defined]


def test_adapters_in_one_concurrent_batch_each_get_their_own_output(
        server: ServerProcess, reference: dict[str, list[int]]) -> None:
    """Batched with other adapters, each request follows its own adapter's reference. A
    different batch shape changes float32 sums in the last bits, so where two tokens tie
    within 0.05 nats greedy may take the other one; it must be such a tie, and the request
    must have followed its own reference past the point where the models' references part
    (position 2), so no request ran under another adapter."""
    names = [MODEL, *STATIC, *STATIC]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        got = list(pool.map(lambda m: sampled(server, m), names))
    for name, (ids, tops) in zip(names, got, strict=True):
        expected = reference[name]
        same = next((i for i, (a, b) in enumerate(zip(ids, expected, strict=False))
                     if a != b), len(ids))
        assert same >= 3, f"{name}: {ids} is not its own reference {expected}"
        if same < len(ids):
            chosen, wanted = tops[same][ids[same]], tops[same].get(expected[same])
            assert wanted is not None and chosen - wanted < 0.05, (
                f"{name} left its reference at token {same} without a tie: {ids} vs "
                f"{expected}, logprobs {tops[same]}")


def test_load_use_unload_on_every_protocol(server: ServerProcess, http: httpx.Client,
                                           reference: dict[str, list[int]], tokenizer: Any,
                                           lora_adapters: dict[str, Path]) -> None:
    # REST load with KServe's repository path and the adapter's folder as a parameter.
    r = http.post("/v2/repository/models/attn-c/load", headers=OPERATOR,
                  json={"parameters": {"lora_path": str(lora_adapters["attn-c"])}})
    assert r.status_code == 200 and r.json() == {"name": "attn-c", "load": True}, r.text
    assert_served_as(server, http, "attn-c", reference["attn-c"], tokenizer)
    counted = series(http, "attn-c")
    assert any(k.startswith("kserve_llm_requests_total") for k in counted), counted
    assert any(k.startswith("kserve_llm_time_to_first_token_seconds_count") for k in counted)
    assert counted['kserve_llm_generation_tokens_total{model="attn-c",protocol="openai"}'] \
        == TOKENS
    r = http.post("/v2/repository/models/attn-c/unload", headers=OPERATOR)
    assert r.status_code == 200 and r.json() == {"name": "attn-c", "unload": True}, r.text
    assert_not_served(server, http, "attn-c")
    assert series(http, "attn-c") == {}, "an unloaded adapter's series must go"

    # gRPC: tritonclient's load_model carries the folder in its `config` JSON.
    config = json.dumps({"lora_path": str(lora_adapters["mlp-d"])})
    assert grpc(server, [{"op": "load", "model": "mlp-d", "config": config}],
                key=OPERATOR_KEY) == [{"ok": True}]
    assert_served_as(server, http, "mlp-d", reference["mlp-d"], tokenizer)
    assert grpc(server, [{"op": "unload", "model": "mlp-d"}], key=OPERATOR_KEY) == [
        {"ok": True}]
    assert_not_served(server, http, "mlp-d")
    assert_served_as(server, http, MODEL, reference[MODEL], tokenizer)


def test_unload_lets_running_requests_finish(server: ServerProcess, http: httpx.Client,
                                             lora_adapters: dict[str, Path]) -> None:
    r = http.post("/v2/repository/models/attn-c/load", headers=OPERATOR,
                  json={"parameters": {"lora_path": str(lora_adapters["attn-c"])}})
    assert r.status_code == 200, r.text
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(http.post, "/v2/models/attn-c/generate", json={
            "text_input": PROMPT, "parameters": {"max_tokens": 300, "ignore_eos": True}})
        # Until the engine runs it (vLLM's own gauges say so), then unload under it.
        scaling = scaling_series_while(http, lambda s: "attn-c" in s["running_lora_adapters"]
                                       and s["vllm:num_requests_running"] >= 1, timeout=60)
        unload = http.post("/v2/repository/models/attn-c/unload", headers=OPERATOR)
        answer = running.result(timeout=300)
    assert unload.status_code == 200, unload.text
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == 300
    assert_not_served(server, http, "attn-c")
    # The series routers and autoscalers read (docs/autoscaling.md), while it ran: vLLM's
    # lora_requests_info named the adapter loaded at run time among the running ones.
    assert "attn-c" in scaling["running_lora_adapters"], scaling
    assert scaling["vllm:num_requests_running"] >= 1, scaling
    assert scaling["vllm:num_requests_waiting"] >= 0, scaling
    assert 0 < scaling["vllm:kv_cache_usage_perc"] <= 1, scaling
    assert scaling["kserve_llm_requests_admitted_waiting"] >= 0, scaling


def scaling_series_while(http: httpx.Client, until: Any, timeout: float = 30) -> dict[str, Any]:
    """The scaling series from ``/metrics`` (Prometheus' own text parser), read until
    ``until(series)`` holds: the gauges summed over their label sets, and the adapters that
    vLLM's ``vllm:lora_requests_info`` lists as running now. (That gauge keeps a label set per
    combination it has seen, valued with the time it was last current: the newest is now.)"""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = ("vllm:num_requests_running", "vllm:num_requests_waiting",
              "vllm:kv_cache_usage_perc", "kserve_llm_requests_admitted_waiting")
    deadline = time.monotonic() + timeout
    while True:
        got: dict[str, Any] = {"running_lora_adapters": set()}
        newest = -1.0
        for family in text_string_to_metric_families(http.get("/metrics").text):
            for sample in family.samples:
                if sample.name in wanted:
                    got[sample.name] = got.get(sample.name, 0.0) + sample.value
                elif sample.name == "vllm:lora_requests_info" and sample.value > newest:
                    newest = sample.value
                    running = sample.labels.get("running_lora_adapters", "")
                    got["running_lora_adapters"] = set(filter(None, running.split(",")))
        if until(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _folder(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def bad_folders(lora_allowed_dir: Path, model_dir: str,
                lora_adapters: dict[str, Path]) -> dict[str, tuple[str, str]]:
    """Folder (inside an allowed folder) -> the words the 4xx must contain."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from deployment.adapters import AdapterSpec, build_adapter

    tmp = lora_allowed_dir / "bad"
    tmp.mkdir()
    not_adapter = _folder(tmp, "not-adapter")
    (not_adapter / "README.md").write_text("no adapter here")
    pickled = _folder(tmp, "pickled")
    shutil.copy(lora_adapters["attn-a"] / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    other_base = tmp / "other-base"
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4,
                                 vocab_size=256)).save_pretrained(other_base)
    return {
        "missing": (str(tmp / "nowhere"), "does not exist"),
        "not an adapter": (str(not_adapter), "no adapter_config.json"),
        "pickled weights": (str(pickled), "adapter_model.bin"),
        "rank above --max-lora-rank": (
            str(build_adapter(model_dir, tmp / "rank16", AdapterSpec("r16", 5, rank=16))),
            "rank 16"),
        "another base model": (
            str(build_adapter(other_base, tmp / "other", AdapterSpec("o", 6))),
            "does not fit this base model"),
    }


def test_bad_loads_are_4xx_that_say_why_and_the_server_keeps_serving(
        server: ServerProcess, http: httpx.Client,
        bad_folders: dict[str, tuple[str, str]]) -> None:
    for case, (folder, words) in bad_folders.items():
        r = http.post("/v2/repository/models/bad/load", headers=OPERATOR,
                      json={"parameters": {"lora_path": folder}})
        assert r.status_code == 400 and words in r.json()["error"], (case, r.text)
        (answer,) = grpc(server, [{"op": "load", "model": "bad",
                                   "config": json.dumps({"lora_path": folder})}],
                         key=OPERATOR_KEY)
        assert answer["status"] == "StatusCode.INVALID_ARGUMENT", (case, answer)
        assert words in answer["error"], (case, answer)
    wrong = [({"parameters": {"lora_path": 7}}, "must be a non-empty string"),
             ({"parameters": ["lora_path"]}, "must be a JSON object"),
             ({"parameters": {}}, "lora_path"),
             ({"parameters": {"config": "{not json"}}, "config"),
             ([1, 2], "JSON object")]
    for body, words in wrong:
        r = http.post("/v2/repository/models/bad/load", json=body, headers=OPERATOR)
        assert r.status_code == 400 and words in r.json()["error"], (body, r.text)
    r = http.post("/v2/repository/models/bad/load", content=b"{", headers={
        "content-type": "application/json", **OPERATOR})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"], r.text
    r = http.post("/v2/repository/models/bad%20name/load", headers=OPERATOR,
                  json={"parameters": {"lora_path": "/tmp"}})
    assert r.status_code == 400 and "not allowed" in r.json()["error"], r.text
    # The base model can be neither loaded over nor unloaded; a name is loaded once.
    r = http.post(f"/v2/repository/models/{MODEL}/unload", headers=OPERATOR)
    assert r.status_code == 403 and "base model" in r.json()["error"], r.text
    (answer,) = grpc(server, [{"op": "unload", "model": MODEL}], key=OPERATOR_KEY)
    assert answer["status"] == "StatusCode.PERMISSION_DENIED", answer
    assert "base model" in answer["error"], answer
    r = http.post("/v2/repository/models/attn-a/load", headers=OPERATOR,
                  json={"parameters": {"lora_path": "/x"}})
    assert r.status_code == 409 and "already loaded" in r.json()["error"], r.text
    r = http.post("/v2/repository/models/never-loaded/unload", headers=OPERATOR)
    assert r.status_code == 404, r.text
    assert http.post("/v2/repository/index").status_code == 200
    assert_serving(http)
    assert "Traceback" not in server.log()


def test_loading_needs_the_operator_key_and_is_bounded(
        server: ServerProcess, http: httpx.Client, lora_adapters: dict[str, Path]) -> None:
    """Only the operator key loads and unloads (401 without a key, 403 with the inference
    key: a client is not an operator), and the operator key is no inference key."""
    body = {"parameters": {"lora_path": str(lora_adapters["attn-c"])}}
    r = httpx.post(server.url + "/v2/repository/models/attn-c/load", json=body, timeout=60)
    assert r.status_code == 401, r.text
    (answer,) = grpc(server, [{"op": "unload", "model": "attn-a"}], key="")
    assert answer["status"] == "StatusCode.UNAUTHENTICATED", answer
    r = http.post("/v2/repository/models/attn-c/load", json=body)  # the inference key
    assert r.status_code == 403 and "operator key" in r.json()["error"], r.text
    r = http.post("/v2/repository/models/attn-a/unload")  # a client unloading another's
    assert r.status_code == 403 and "operator key" in r.json()["error"], r.text
    answers = grpc(server, [{"op": "unload", "model": "attn-a"},
                            {"op": "load", "model": "attn-c",
                             "config": json.dumps(body["parameters"])}])
    assert [a["status"] for a in answers] == ["StatusCode.PERMISSION_DENIED"] * 2, answers
    r = http.post(f"/v2/models/{MODEL}/generate", headers=OPERATOR, json={"text_input": "hi"})
    assert r.status_code == 401, r.text
    assert_not_served(server, http, "attn-c")
    assert http.get("/v2/models/attn-a/ready").json() == {"name": "attn-a", "ready": True}
    # --max_adapters 3: two static adapters + one loaded, then the fourth is refused.
    r = http.post("/v2/repository/models/attn-c/load", json=body, headers=OPERATOR)
    assert r.status_code == 200, r.text
    r = http.post("/v2/repository/models/mlp-d/load", headers=OPERATOR,
                  json={"parameters": {"lora_path": str(lora_adapters["mlp-d"])}})
    assert r.status_code == 400 and "--max_adapters 3" in r.json()["error"], r.text
    r = http.post("/v2/repository/models/attn-c/unload", headers=OPERATOR)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory, lora_allowed_dir: Path,
            lora_adapters: dict[str, Path]) -> dict[str, str]:
    """Paths outside the allowed folders, of every kind (a name -> the path)."""
    tmp = tmp_path_factory.mktemp("outside-adapters")
    real = tmp / "attn-c"
    shutil.copytree(lora_adapters["attn-c"], real)  # a good adapter, in the wrong place
    (tmp / "file").write_text("not a folder")
    links = lora_allowed_dir / "links"
    links.mkdir()
    (links / "escape").symlink_to(real, target_is_directory=True)
    (links / "dangling").symlink_to(tmp / "nowhere")
    return {"a real adapter": str(real), "a missing folder": str(tmp / "nowhere"),
            "a file": str(tmp / "file"), "a symlink out": str(links / "escape"),
            "a dangling symlink out": str(links / "dangling"),
            "dot-dot": f"{lora_allowed_dir}/../{tmp.name}/attn-c", "the root": "/"}


def test_paths_outside_the_allowed_dirs_get_one_answer(server: ServerProcess,
                                                       http: httpx.Client,
                                                       outside: dict[str, str]) -> None:
    """--allowed_adapter_dirs: whatever lies at a path outside them (an adapter, nothing, a
    file, a symlink's target), REST and gRPC give the same 403 / PERMISSION_DENIED, which
    does not say whether the path exists; and nothing is loaded."""
    for case, path in outside.items():
        r = http.post("/v2/repository/models/out/load", headers=OPERATOR,
                      json={"parameters": {"lora_path": path}})
        assert r.status_code == 403 and r.json() == {"error": OUTSIDE_ALLOWED_DIRS}, (case, r.text)
        (answer,) = grpc(server, [{"op": "load", "model": "out",
                                   "config": json.dumps({"lora_path": path})}],
                         key=OPERATOR_KEY)
        assert answer == {"error": OUTSIDE_ALLOWED_DIRS,
                          "status": "StatusCode.PERMISSION_DENIED"}, (case, answer)
    assert_not_served(server, http, "out")
    assert "Traceback" not in server.log()


def test_vllms_lora_route_goes_through_the_runtimes_checks(
        server: ServerProcess, http: httpx.Client, reference: dict[str, list[int]],
        tokenizer: Any, lora_adapters: dict[str, Path], bad_folders: dict[str, tuple[str, str]],
        outside: dict[str, str]) -> None:
    """vLLM's operator route ``/openai/v1/load_lora_adapter`` (``--enable_operator_routes``)
    is the repository load: operator key, allowed folders, the folder checks, the names and
    --max_adapters; what it loads is a served model on every route; unload likewise."""
    def load(name: str, path: str, headers: dict[str, str] = OPERATOR) -> httpx.Response:
        return http.post("/openai/v1/load_lora_adapter", headers=headers,
                         json={"lora_name": name, "lora_path": path})

    folder = str(lora_adapters["attn-c"])
    assert load("attn-c", folder, AUTH).status_code == 403  # the inference key
    for case, (path, words) in bad_folders.items():
        r = load("bad", path)
        assert r.status_code == 400 and words in r.json()["error"]["message"], (case, r.text)
    r = load("out", outside["a real adapter"])
    assert r.status_code == 403 and r.json()["error"]["message"] == OUTSIDE_ALLOWED_DIRS
    assert load(MODEL, folder).status_code == 403
    r = load("attn-c", folder)
    assert r.status_code == 200, r.text
    assert r.text == "Success: LoRA adapter 'attn-c' added successfully."  # vLLM's answer
    text = tokenizer.decode(reference["attn-c"], skip_special_tokens=True)
    assert generate_text(http, "attn-c") == text and openai_ids(server, "attn-c") == \
        reference["attn-c"]
    r = load("mlp-d", str(lora_adapters["mlp-d"]))  # 2 static + 1: --max_adapters 3
    assert r.status_code == 400 and "--max_adapters 3" in r.json()["error"]["message"], r.text
    r = http.post("/openai/v1/unload_lora_adapter", headers=AUTH, json={"lora_name": "attn-c"})
    assert r.status_code == 403, r.text
    r = http.post("/openai/v1/unload_lora_adapter", headers=OPERATOR,
                  json={"lora_name": "attn-c"})
    assert r.status_code == 200, r.text
    assert r.text == "Success: LoRA adapter 'attn-c' removed successfully."
    assert_not_served(server, http, "attn-c")


def test_adapter_loading_without_lora_in_the_engine_is_refused_at_start(model_dir: str) -> None:
    from tests.support.server import REPO, free_port, runtime_command

    out = subprocess.run(runtime_command(
        model_dir=model_dir, http_port=free_port(), grpc_port=free_port(),
        extra=["--enable_adapter_loading", "true", "--operator_key", "op",
               f"--allowed_adapter_dirs={model_dir}"]), capture_output=True, text=True,
        timeout=300, cwd=REPO)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "--enable_adapter_loading needs vLLM's --enable-lora" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("extra,needle", [
    (["--api_key", "same-key", "--operator_key", "same-key"],
     "the operator key must differ from the inference key"),
    (["--enable_adapter_loading", "true", "--enable-lora", "--allowed_adapter_dirs", "."],
     "--enable_adapter_loading requires an operator key"),
    (["--enable_adapter_loading", "true", "--enable-lora", "--operator_key", "op"],
     "--enable_adapter_loading needs --allowed_adapter_dirs"),
    (["--enable_operator_routes", "true", "--api_key", "k"],
     "--enable_operator_routes requires an operator key"),
])
def test_operator_settings_that_cannot_be_honoured_refuse_to_start(
        model_dir: str, extra: list[str], needle: str) -> None:
    """Exit 2 with one line, before any engine: the same key for both roles, adapter loading
    or operator routes without an operator key, loading without allowed folders."""
    from tests.support.server import REPO, free_port, runtime_command

    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "OPERATOR_API_KEY")}
    out = subprocess.run(runtime_command(
        model_dir=model_dir, http_port=free_port(), grpc_port=free_port(), extra=extra),
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert needle in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "same-key" not in out.stderr


@pytest.mark.parametrize("path,body", [
    ("/openai/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 1,
                                "prompt_logprobs": 1}),
    ("/openai/v1/completions", {"model": "attn-a", "prompt": PROMPT, "max_tokens": 1,
                                "echo": True, "logprobs": 0}),
    ("/openai/v1/chat/completions", {"model": MODEL, "max_tokens": 1, "echo": True,
                                     "messages": [{"role": "user", "content": PROMPT}]}),
])
def test_prompt_logprobs_are_refused_rather_than_stopping_the_engine(
        http: httpx.Client, path: str, body: dict) -> None:
    """vLLM 0.32's CPU LoRA logits layer stops the engine on a prompt-logprobs request (found
    when the explainer, which asks for them, ran against this server): a 400 instead, and the
    server keeps serving."""
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    assert "--enable-lora" in r.json()["error"]["message"]
    r = http.post("/openai/v1/completions", json={"model": MODEL, "prompt": PROMPT,
                                                  "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.text


def test_loading_is_off_by_default(predictor: ServerProcess) -> None:
    """Last here: the session's predictor starts after the LoRA server has stopped (when this
    module runs alone). Without an operator key, operator actions are off."""
    r = httpx.post(predictor.url + "/v2/repository/models/a1/load",
                   json={"parameters": {"lora_path": "/tmp"}}, timeout=60)
    assert r.status_code == 403 and "--enable_adapter_loading" in r.json()["error"], r.text
    assert "--operator_key" in r.json()["error"], r.text
