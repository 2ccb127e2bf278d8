"""``python -m runtime serve``: the ``vllm serve`` contract KServe's LLMInferenceService runs,
against the real process, with the command line its template writes (two served names, port,
TLS with refresh, the controller's LoRA arguments in JSON form, vLLM's ``--api-key``)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.runtime.conftest import QUESTION
from tests.support import kv_events
from tests.support.metrics import labelled_sum
from tests.support.server import ServerProcess, free_port
from tests.support.tls import fingerprint, rotate_and_wait, self_signed, served_fingerprint

pytestmark = pytest.mark.slow

NAMES = ("smollm2", "publishers/test/models/smollm2")
KEY = "serve-key"


class Served:
    def __init__(self, server: ServerProcess, cert: Path, key: Path, port: int) -> None:
        self.server, self.cert, self.key, self.port = server, cert, key, port
        self.kv_port = 0  # vLLM's KV-event publisher (--kv-events-config)
        self.client = httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=str(cert),
                                   timeout=120, headers={"authorization": f"Bearer {KEY}"})

    def openai(self, cert: Path | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"https://127.0.0.1:{self.port}/v1", api_key=KEY,
                             http_client=httpx.Client(verify=str(cert or self.cert)))


@pytest.fixture(scope="module")
def served(model_dir: str, lora_adapters: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("serve-tls")
    cert, key = self_signed(folder)
    port, kv_port = free_port(), free_port()
    lora = json.dumps({"name": "a1", "path": str(lora_adapters["attn-a"])})
    argv = [sys.executable, "-m", "runtime", "serve", model_dir, "--served-model-name", *NAMES,
            "--port", str(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
            "--enable-ssl-refresh", "--max-model-len=2048", "--api-key", KEY,
            "--enable-lora", "--max-lora-rank=8", "--lora-modules", lora,
            kv_events.engine_flag(kv_port)]
    server = ServerProcess(argv, port=port, health_path="/health", tls_ca=cert,
                           name="vllm-serve").start()
    served = Served(server, cert, key, port)
    served.kv_port = kv_port
    try:
        yield served
    finally:
        served.client.close()
        server.stop()


def test_health_and_models_as_vllm_serve(served: Served) -> None:
    # While the engine loaded, /health answered 503 (the fixture polled it twice a second):
    # the server answers through the start-up rather than leaving probes unanswered.
    statuses = served.server.statuses_before_ready
    assert set(statuses) == {503} and statuses[503] >= 3, statuses
    r = httpx.get(f"https://127.0.0.1:{served.port}/health", verify=str(served.cert))
    assert r.status_code == 200 and r.content == b"", "/health needs no key, answers empty"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{served.port}/health", timeout=10)  # HTTPS only
    cards = {m["id"]: m for m in served.client.get("/v1/models").json()["data"]}
    assert set(cards) == {*NAMES, "a1"}
    assert cards["a1"]["parent"] == NAMES[0]
    assert httpx.get(f"https://127.0.0.1:{served.port}/v1/models",
                     verify=str(served.cert)).status_code == 401, "vLLM's --api-key applies"


@pytest.mark.parametrize("name", NAMES)
def test_chat_answers_under_either_name(served: Served, name: str) -> None:
    out = served.openai().chat.completions.create(
        model=name, messages=[{"role": "user", "content": QUESTION}], max_tokens=16,
        temperature=0)
    assert "Paris" in out.choices[0].message.content
    assert out.model == NAMES[0]  # as vllm serve: the first served name answers for all


def test_an_aliases_series_are_all_under_the_alias(served: Served) -> None:
    """A request for the second served name is counted, and its tokens and timings measured,
    under that name: one request, one model label on every series."""
    alias = NAMES[1]

    def read() -> str:
        return served.client.get("/metrics").text

    def under(text: str, series: str, model: str) -> float:
        return labelled_sum(text, series, model=model)

    before = read()
    out = served.openai().completions.create(model=alias, prompt=QUESTION, max_tokens=8,
                                             temperature=0)
    after = read()  # counted before the answer's last byte: no waiting
    for series in ("kserve_llm_requests_total", "kserve_llm_generation_tokens_total",
                   "kserve_llm_prompt_tokens_total", "kserve_llm_time_to_first_token_seconds_count"):
        assert under(after, series, alias) > under(before, series, alias), series
        assert under(after, series, NAMES[0]) == under(before, series, NAMES[0]), series
    assert under(after, "kserve_llm_generation_tokens_total", alias) - under(
        before, "kserve_llm_generation_tokens_total", alias) == out.usage.completion_tokens


def test_the_adapter_is_served_by_name(served: Served) -> None:
    client = served.openai()

    def ids(model: str) -> list[int]:
        out = client.completions.create(model=model, prompt="My favourite food is",
                                        max_tokens=16, temperature=0,
                                        extra_body={"return_token_ids": True})
        return list(out.choices[0].token_ids)  # type: ignore[attr-defined]

    assert ids("a1") != ids(NAMES[0]), "the adapter's answer must differ from the base model's"


def test_vllm_series_and_the_runtimes_additions_on_the_same_port(served: Served) -> None:
    metrics = served.client.get("/metrics").text
    for series in ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                   "kserve_llm_requests_total"):
        assert series in metrics, series
    r = served.client.post("/v2/models/smollm2/generate", json={
        "text_input": QUESTION, "parameters": {"max_tokens": 16, "temperature": 0,
                                               "apply_chat_template": True}})
    assert r.status_code == 200 and "Paris" in r.json()["text_output"], r.text


def test_replaced_certificate_files_take_effect_without_a_restart(
        served: Served, tmp_path: Path) -> None:
    assert served_fingerprint(served.port) == fingerprint(served.cert)
    pid = served.server.proc.pid if served.server.proc else None
    new_cert = rotate_and_wait(served.cert, served.key, served.port, tmp_path)
    out = served.openai(new_cert).chat.completions.create(
        model=NAMES[0], messages=[{"role": "user", "content": QUESTION}], max_tokens=16,
        temperature=0)
    assert "Paris" in out.choices[0].message.content
    assert served.server.proc is not None and served.server.proc.pid == pid
    assert served.server.proc.poll() is None and os.path.exists(served.cert)
    assert "Traceback" not in served.server.log()


def test_v2_infer_and_the_runtimes_limits_on_the_same_port(served: Served) -> None:
    r = served.client.post("/v2/models/smollm2/infer", json={
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1],
                    "data": [QUESTION]}],
        "parameters": {"max_tokens": 16, "temperature": 0, "apply_chat_template": True}})
    assert r.status_code == 200 and "Paris" in r.json()["outputs"][0]["data"][0], r.text
    r = served.client.post("/v1/completions", json={"model": NAMES[0], "prompt": "hi", "n": 17})
    assert r.status_code == 400 and "--max_n" in r.json()["error"]["message"], r.text


def test_kv_cache_events_as_vllm_serve(served: Served) -> None:
    """vLLM's --kv-events-config works in serve mode as in `vllm serve`: a router subscribed
    to the publisher sees the blocks of a prompt this server was sent (issue 25)."""
    with kv_events.Subscriber(served.kv_port) as subscriber:
        kv_events.assert_prompt_published(subscriber, served.client, NAMES[1])


def test_responses_and_messages_as_vllm_serve(served: Served) -> None:
    """The Responses and Messages APIs `vllm serve` answers, here too (issue 23): with vLLM's
    --api-key as a Bearer token (the anthropic SDK's auth_token), under the second served name
    and the adapter's, counted under that name, errors in each API's shape."""
    import anthropic

    r = served.openai().responses.create(model=NAMES[1], input=QUESTION, temperature=0,
                                         max_output_tokens=20)
    assert "Paris" in r.output_text
    claude = anthropic.Anthropic(base_url=f"https://127.0.0.1:{served.port}", auth_token=KEY,
                                 http_client=anthropic.DefaultHttpxClient(
                                     verify=str(served.cert)))  # the SDK's own httpx2
    before = labelled_sum(served.client.get("/metrics").text, "kserve_llm_requests_total",
                          model="a1", protocol="anthropic")
    m = claude.messages.create(model="a1", max_tokens=16,
                               messages=[{"role": "user", "content": QUESTION}])
    assert m.content[0].text and m.model in ("a1", NAMES[0])
    assert labelled_sum(served.client.get("/metrics").text, "kserve_llm_requests_total",
                        model="a1", protocol="anthropic") == before + 1
    assert claude.messages.count_tokens(model=NAMES[0], messages=[
        {"role": "user", "content": QUESTION}]).input_tokens > 0
    r = httpx.post(f"https://127.0.0.1:{served.port}/v1/messages", verify=str(served.cert),
                   json={"model": NAMES[0], "max_tokens": 5,
                         "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = served.client.post("/v1/rerank", json={"model": NAMES[0], "query": "a",
                                               "documents": ["b"]})
    assert r.status_code == 404 and "Rerank" in r.text


def test_sigterm_drains_as_the_runtime_does(served: Served) -> None:
    """Last in this module: it stops the module's server. SIGTERM: /health 503 at once, new
    requests 503 + Retry-After, the stream in flight finishes, then the process exits."""
    import signal
    import threading

    assert served.server.proc is not None
    events: list[dict] = []
    started = threading.Event()
    # The certificate was rotated by the test above: TLS is not what this test is about.
    client = httpx.Client(base_url=f"https://127.0.0.1:{served.port}", verify=False,
                          timeout=120, headers={"authorization": f"Bearer {KEY}"})

    def stream() -> None:
        with client.stream("POST", "/v2/models/smollm2/generate_stream", json={
                "text_input": "Tell me a story", "parameters": {
                    "max_tokens": 64, "ignore_eos": True}}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    started.set()

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(120), "the stream never started"
    served.server.proc.send_signal(signal.SIGTERM)
    health = client.get("/health", timeout=10)
    assert health.status_code == 503
    late = client.post("/v1/completions", json={"model": NAMES[0], "prompt": "hi"})
    assert late.status_code == 503 and late.headers.get("retry-after"), late.text
    t.join(120)
    assert events and events[-1]["usage"]["completion_tokens"] == 64, events[-1:]
    assert not any("error" in e for e in events)
    served.server.proc.wait(timeout=60)  # exits once nothing is in flight
    client.close()
