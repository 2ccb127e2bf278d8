"""The Responses API and Anthropic's Messages API against the real server and model (issue 23),
through the clients people use: the ``openai`` SDK's ``responses`` and the ``anthropic`` SDK.
The routes, keys, limits and counts on the fake engine: tests/runtime/test_vllm_apis.py;
disconnects: tests/runtime/test_disconnect.py; score and rerank: tests/runtime/test_embeddings.py.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.runtime.conftest import MODEL, QUESTION, assert_still_serving

pytestmark = pytest.mark.slow

WEATHER = [{"type": "function", "name": "get_weather", "description": "Get the weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}]
CAPITAL = {"type": "json_schema", "name": "capital", "strict": True, "schema": {
    "type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"],
    "additionalProperties": False}}


@pytest.fixture(scope="module")
def claude(predictor) -> anthropic.Anthropic:
    """The anthropic SDK pointed at the runtime (it appends /v1/messages itself)."""
    return anthropic.Anthropic(base_url=predictor.url, api_key="none", timeout=120)


def _requests(http: httpx.Client, protocol: str) -> float:
    """Successful requests counted under ``protocol`` for the model."""
    labels = (f'model="{MODEL}"', 'outcome="success"', f'protocol="{protocol}"')
    return sum(float(line.rsplit(" ", 1)[1]) for line in http.get("/metrics").text.splitlines()
               if line.startswith("kserve_llm_requests_total{")
               and all(label in line for label in labels))


@pytest.mark.parametrize("prefix", ["/openai/v1", "/v1"])
def test_responses_answer_paris(predictor, http, prefix: str) -> None:
    client = openai.OpenAI(base_url=predictor.url + prefix, api_key="none", timeout=120)
    before = _requests(http, "openai")
    r = client.responses.create(model=MODEL, input=QUESTION, temperature=0,
                                max_output_tokens=30)
    assert "Paris" in r.output_text
    assert r.status == "completed" and r.usage.output_tokens > 0
    assert _requests(http, "openai") == before + 1  # counted once, as the OpenAI protocol


def test_responses_stream(oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model=MODEL, input=QUESTION, temperature=0,
                                       max_output_tokens=30, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "Paris" in text
    assert text == events[-1].response.output_text


def test_responses_required_tool_call(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model=MODEL, input="What is the weather in Paris?", tools=WEATHER,
                             tool_choice="required", temperature=0, max_output_tokens=80)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and all(c.name == "get_weather" for c in calls), r.output
    json.loads(calls[0].arguments)  # JSON, at least


@pytest.mark.xfail(strict=True, reason="issue 23 item 4 on the Responses API: vLLM's own "
                   "required-tool grammar lets SmolLM2 answer the arguments as a bare string "
                   "('\"Paris\"'); the runtime's forced-call grammar covers chat only so far")
def test_responses_required_tool_call_fits_its_schema(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model=MODEL, input="What is the weather in Paris?", tools=WEATHER,
                             tool_choice="required", temperature=0, max_output_tokens=80)
    call = next(o for o in r.output if o.type == "function_call")
    assert isinstance(json.loads(call.arguments).get("city"), str)


def test_responses_text_format_json_schema(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model=MODEL, input="What is the capital of France? Answer in JSON.",
                             temperature=0, max_output_tokens=60, text={"format": CAPITAL})
    assert json.loads(r.output_text) == {"capital": "Paris"}


def test_responses_retrieve_is_refused_with_the_reason(http: httpx.Client) -> None:
    r = http.post("/v1/responses", json={"model": MODEL, "input": "hi", "max_output_tokens": 2,
                                         "store": True})
    assert r.status_code == 200, r.text
    got = http.get(f"/v1/responses/{r.json()['id']}")
    assert got.status_code == 404 and "not stored" in got.text


def test_messages_answer_paris(claude: anthropic.Anthropic, http: httpx.Client) -> None:
    before = _requests(http, "anthropic")
    m = claude.messages.create(model=MODEL, max_tokens=30, extra_body={"temperature": 0},
                               messages=[{"role": "user", "content": QUESTION}])
    assert "Paris" in m.content[0].text
    assert m.stop_reason == "end_turn" and m.usage.output_tokens > 0
    assert _requests(http, "anthropic") == before + 1


def test_messages_stream(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model=MODEL, max_tokens=30, extra_body={"temperature": 0},
                                messages=[{"role": "user", "content": QUESTION}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "Paris" in text
    assert final.content[0].text == text and final.stop_reason == "end_turn"


def test_messages_count_tokens(claude: anthropic.Anthropic, http: httpx.Client) -> None:
    short = claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    long = claude.messages.count_tokens(model=MODEL,
                                        messages=[{"role": "user", "content": QUESTION}])
    assert 0 < short.input_tokens < long.input_tokens
    r = http.post("/v1/messages/count_tokens", json={
        "model": MODEL, "messages": [{"role": "user", "content": QUESTION}]})
    assert r.json()["input_tokens"] == long.input_tokens


def test_messages_unknown_model_is_anthropic_not_found(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        claude.messages.create(model="no-such-model", max_tokens=5,
                               messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in err.value.body["error"]["message"]


def test_messages_bad_input_is_anthropic_shaped(http: httpx.Client) -> None:
    r = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 0,
                                        "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 5000,
                                        "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["type"] == "error", r.text  # past the context
    assert_still_serving(http)


@pytest.mark.parametrize("path,api", [
    ("/rerank", "Rerank"), ("/v1/score", "Score"), ("/classify", "Classification"),
    ("/pooling", "Pooling"), ("/v2/embed", "Embeddings")])
def test_pooling_apis_on_a_generative_model_are_a_clear_404(http: httpx.Client, path: str,
                                                            api: str) -> None:
    r = http.post(path, json={"model": MODEL, "query": "a", "documents": ["b"], "input": "a"})
    assert r.status_code == 404, r.text
    assert f"does not support {api}" in r.json()["error"]["message"]


def test_audio_on_a_text_model_is_a_clear_404(http: httpx.Client) -> None:
    r = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF")},
                  data={"model": MODEL})
    assert r.status_code == 404, r.text
    assert "does not support Transcriptions API" in r.json()["error"]["message"]


def test_invocations_and_version(http: httpx.Client) -> None:
    r = http.post("/invocations", json={"model": MODEL, "temperature": 0, "max_tokens": 20,
                                        "messages": [{"role": "user", "content": QUESTION}]})
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]
    r = http.post("/invocations", json={"model": MODEL, "prompt": "The capital of France is",
                                        "temperature": 0, "max_tokens": 3})
    assert r.status_code == 200 and r.json()["object"] == "text_completion", r.text
    assert http.post("/invocations", json={"nothing": 1}).status_code == 400
    assert http.get("/version").json()["version"].startswith("0.32")
