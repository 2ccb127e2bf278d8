"""Structured outputs and tool calls against the real predictor, on every protocol.

Every check samples at temperature 1.0, at least 10 answers (batched: ``n`` or B prompts in one
request), and checks meaning: the answer parses and validates against the schema with
``jsonschema``, is one of the choices, matches the regex; a tool call names an offered function
and its arguments validate against that function's ``parameters``. Unconstrained, SmolLM2-135M
at temperature 1.0 produces none of these reliably (a named tool choice came back with
arguments ``"Paris"`` before the runtime decoded forced calls itself).
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import openai
import pydantic
import pytest

from tests.runtime.conftest import MODEL, assert_still_serving, v2_body
from tests.runtime.test_grpc import grpc_infer
from tests.runtime.test_triton_stream import grpc_url, run_client

pytestmark = pytest.mark.slow

N = 10
# Every sample is seeded (the n samples of one request get SEED + i in vLLM; a batch's prompts
# are numbered variants), so a run is repeatable: a check that fails, fails again. Unseeded, an answer that ran out of tokens in 1 run of 5 made
# the suite flaky.
SEED = 1234
# Bounded, so a sample cannot run past max_tokens; the integer range and the enum are meaning.
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "celsius", "sky"],
           "properties": {"city": {"type": "string", "maxLength": 20},
                          "celsius": {"type": "integer", "minimum": -30, "maximum": 45},
                          "sky": {"enum": ["sunny", "cloudy", "rain"]}}}
PROMPT = "Give today's weather in Paris as JSON."
CHOICES = ["yes", "no", "maybe"]
REGEX = r"[A-Z][a-z]{2,8} [0-9]{2}-[0-9]{4}"
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
     "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                    "properties": {"city": {"type": "string", "maxLength": 20},
                                   "unit": {"enum": ["C", "F"]}}}}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a timezone",
     "parameters": {"type": "object", "additionalProperties": False, "required": ["tz"],
                    "properties": {"tz": {"type": "string", "maxLength": 20},
                                   "hour24": {"type": "boolean"}}}}},
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def variants(prompt: str) -> list[str]:
    """``N`` numbered forms of ``prompt`` for one batch: a batch's prompts share its seed, and
    the same prompt with the same seed would give ``N`` copies of one sample."""
    return [f"{prompt} ({i + 1})" for i in range(N)]


def assert_fits(text: str, schema: dict[str, Any] = WEATHER) -> None:
    jsonschema.validate(json.loads(text), schema)


def assert_call_fits(name: str, arguments: str, only: str | None = None) -> None:
    assert name in PARAMS, name
    if only is not None:
        assert name == only
    jsonschema.validate(json.loads(arguments), PARAMS[name])


# ---- JSON schema on every protocol ----

def test_openai_chat_response_format_json_schema(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], n=N, temperature=1.0, seed=SEED,
        max_tokens=200, response_format={"type": "json_schema", "json_schema": {
            "name": "weather", "schema": WEATHER}})
    assert len(r.choices) == N
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice
        assert_fits(choice.message.content or "")


def test_openai_sdk_parse_returns_the_pydantic_object(oai: openai.OpenAI) -> None:
    class Weather(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        city: str = pydantic.Field(max_length=20)
        celsius: int = pydantic.Field(ge=-30, le=45)

    r = oai.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                                   response_format=Weather, n=N, temperature=1.0, seed=SEED, max_tokens=200)
    parsed = [c.message.parsed for c in r.choices]
    assert len(parsed) == N and all(isinstance(p, Weather) for p in parsed), parsed
    assert all(-30 <= p.celsius <= 45 for p in parsed if p is not None)


def test_v2_rest_json_schema_as_a_json_string(http: httpx.Client) -> None:
    r = http.post(f"/v2/models/{MODEL}/infer", json=v2_body(
        variants(PROMPT), max_tokens=200, temperature=1.0, seed=SEED, apply_chat_template=True,
        structured_outputs=json.dumps({"json": WEATHER})))
    assert r.status_code == 200, r.text
    for text in r.json()["outputs"][0]["data"]:
        assert_fits(text)


def test_v2_rest_object_in_triton_sampling_parameters(http: httpx.Client) -> None:
    body = v2_body(variants(PROMPT), max_tokens=200, temperature=1.0, seed=SEED,
                   apply_chat_template=True)
    body["inputs"].append({"name": "sampling_parameters", "datatype": "BYTES", "shape": [1],
                           "data": [json.dumps({"structured_outputs": {"json": WEATHER}})]})
    r = http.post(f"/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 200, r.text
    for text in r.json()["outputs"][0]["data"]:
        assert_fits(text)


def test_generate_json_schema_as_an_object(http: httpx.Client) -> None:
    def one(i: int) -> httpx.Response:
        return http.post(f"/v2/models/{MODEL}/generate", json={
            "text_input": PROMPT + "\n", "parameters": {
                "max_tokens": 200, "temperature": 1.0, "seed": SEED + i,
                "structured_outputs": {"json": WEATHER}}})

    with ThreadPoolExecutor(N) as pool:  # concurrent: the engine batches them
        answers = list(pool.map(one, range(N)))
    for r in answers:
        assert r.status_code == 200, r.text
        assert_fits(r.json()["text_output"])


def test_grpc_model_infer_json_schema(predictor) -> None:
    res = grpc_infer(predictor.grpc_port, variants(PROMPT), {
        "max_tokens": 200, "temperature": "1.0", "seed": SEED, "apply_chat_template": True,
        "structured_outputs": json.dumps({"json": WEATHER})})
    texts = [t.decode() if isinstance(t, bytes) else t for t in res.outputs[0].data]
    assert len(texts) == N
    for text in texts:
        assert_fits(text)


def test_grpc_model_stream_infer_json_schema_and_regex(predictor) -> None:
    requests = [{"prompt": PROMPT, "inputs": {"stream": True}, "parameters": {
        "max_tokens": 200, "temperature": 1.0, "seed": SEED + i, "apply_chat_template": True,
        "structured_outputs": json.dumps({"json": WEATHER})}} for i in range(N)]
    requests.append({"prompt": "A name and a code:", "inputs": {"stream": True}, "parameters": {
        "max_tokens": 30, "temperature": 1.0, "seed": SEED, "structured_outputs": json.dumps({"regex": REGEX})}})
    answers = run_client(grpc_url(predictor), "stream", requests)
    texts = ["".join(p["outputs"]["text_output"][0] for p in pieces) for pieces in answers]
    for text in texts[:-1]:
        assert_fits(text)
    assert re.fullmatch(REGEX, texts[-1]), texts[-1]


# ---- choice and regex ----

def test_choice_on_openai_v2_and_kserve_v1(oai: openai.OpenAI, http: httpx.Client) -> None:
    r = oai.completions.create(model=MODEL, prompt="Is it raining in Paris? Answer:", n=N,
                               temperature=1.0, seed=SEED, max_tokens=10,
                               extra_body={"structured_outputs": {"choice": CHOICES}})
    assert sorted({c.text for c in r.choices} - set(CHOICES)) == []
    r2 = http.post(f"/v1/models/{MODEL}:predict", json={
        "instances": variants("Is it raining in Paris?"), "parameters": {
            "temperature": 1.0, "seed": SEED, "max_tokens": 10, "apply_chat_template": True,
            "structured_outputs": {"choice": CHOICES}}})
    assert r2.status_code == 200, r2.text
    assert set(r2.json()["predictions"]) <= set(CHOICES), r2.json()


def test_regex_on_v2_and_generate_stream(http: httpx.Client) -> None:
    r = http.post(f"/v2/models/{MODEL}/infer", json=v2_body(
        variants("A name and a code:"), max_tokens=30, temperature=1.0, seed=SEED,
        structured_outputs=json.dumps({"regex": REGEX})))
    assert r.status_code == 200, r.text
    for text in r.json()["outputs"][0]["data"]:
        assert re.fullmatch(REGEX, text), text
    with http.stream("POST", f"/v2/models/{MODEL}/generate_stream", json={
            "text_input": "A name and a code:", "parameters": {
                "max_tokens": 30, "temperature": 1.0, "seed": SEED, "structured_outputs": {"regex": REGEX}}}
                     ) as s:
        events = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:")]
    assert re.fullmatch(REGEX, "".join(e["text_output"] for e in events)), events


# ---- grammar and json_object ----

GRAMMAR = 'root ::= animal " " number\nanimal ::= "cat" | "dog" | "owl"\nnumber ::= [1-9] [0-9]?'


def test_grammar_on_generate_and_v2(http: httpx.Client) -> None:
    """An EBNF grammar (xgrammar's GBNF) constrains every sample to its language."""
    so = {"grammar": GRAMMAR}
    r = http.post(f"/v2/models/{MODEL}/infer", json=v2_body(
        variants("Name an animal and a number."), max_tokens=20, temperature=1.0, seed=SEED,
        structured_outputs=json.dumps(so)))
    assert r.status_code == 200, r.text
    texts = r.json()["outputs"][0]["data"]
    r = http.post(f"/v2/models/{MODEL}/generate", json={
        "text_input": "Name an animal and a number.", "parameters": {
            "max_tokens": 20, "temperature": 1.0, "seed": SEED, "structured_outputs": so}})
    assert r.status_code == 200, r.text
    for text in [*texts, r.json()["text_output"]]:
        assert re.fullmatch(r"(cat|dog|owl) [1-9][0-9]?", text), text


def test_json_object_on_openai_and_generate(oai: openai.OpenAI, http: httpx.Client) -> None:
    """response_format json_object / structured_outputs json_object: every answer that ends
    is a JSON object (any keys). Unbounded, a sample at temperature 1.0 can ramble inside one
    string until max_tokens (measured with this seed: 6 of 10 end, after 19 to 203 tokens; the
    other 4 were still going at 300); such answers are incomplete by definition, so the test
    asks that half end and checks every one that did."""
    r = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], n=N, temperature=1.0, seed=SEED,
        max_tokens=220, response_format={"type": "json_object"})
    texts = [c.message.content or "" for c in r.choices if c.finish_reason == "stop"]
    g = http.post(f"/v2/models/{MODEL}/generate", json={"text_input": PROMPT + "\n", "parameters": {
        "max_tokens": 220, "temperature": 1.0, "seed": SEED, "structured_outputs": {"json_object": True}}})
    assert g.status_code == 200, g.text
    if g.json()["finish_reason"] == "stop":
        texts.append(g.json()["text_output"])
    assert len(texts) >= N // 2, [c.finish_reason for c in r.choices]
    for text in texts:
        assert isinstance(json.loads(text), dict), text


# ---- tool calls ----

@pytest.mark.parametrize("tool_choice", [NAMED, "required"], ids=["named", "required"])
def test_forced_tool_calls_fit_their_schema(oai: openai.OpenAI, tool_choice: Any) -> None:
    # One call per answer (parallel_tool_calls false: maxItems 1); the grammar allows no free
    # whitespace, so a call needs about 15 tokens (the 80-token tests below).
    r = oai.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS,
                                    tool_choice=tool_choice, n=N, temperature=1.0, seed=SEED,
                                    max_tokens=400, parallel_tool_calls=False)
    only = "get_weather" if tool_choice is NAMED else None
    for choice in r.choices:
        assert choice.finish_reason == ("stop" if only else "tool_calls"), choice
        assert choice.message.tool_calls, choice
        for call in choice.message.tool_calls:
            assert_call_fits(call.function.name, call.function.arguments, only)


# In "auto" SmolLM2-135M answers a bare question in prose (0 calls in 30 samples, three seeds);
# one earlier turn in the hermes format shows it the form, and then it calls (6 of 10 here).
ONE_SHOT = [
    {"role": "user", "content": "What is the weather in Rome?"},
    {"role": "assistant", "content": '<tool_call>\n{"name": "get_weather", '
                                     '"arguments": {"city": "Rome"}}\n</tool_call>'},
    {"role": "user", "content": "What is the weather in Paris?"}]


def test_auto_tool_calls_parsed_by_hermes_fit_their_schema(oai: openai.OpenAI) -> None:
    """tool_choice "auto" with the hermes parser: the model may call or answer; tools that do
    not say "strict": false are decoded strictly, so every call it makes fits its schema, the
    calls it makes are parsed out (at least half of the seeded samples call: the prompt above
    makes it call), and no raw <tool_call> markup is left in the content."""
    r = oai.chat.completions.create(model=MODEL, messages=ONE_SHOT, tools=TOOLS,
                                    tool_choice="auto", n=N, temperature=1.0, seed=SEED,
                                    max_tokens=120)
    calls = []
    for choice in r.choices:
        if choice.finish_reason == "length":
            continue
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls", choice
            for call in choice.message.tool_calls:
                assert_call_fits(call.function.name, call.function.arguments)
                calls.append(json.loads(call.function.arguments))
        assert "<tool_call>" not in (choice.message.content or ""), choice
    assert len(calls) >= N // 2, [c.finish_reason for c in r.choices]
    assert {"city": "Paris"} in calls, calls  # meaning: the city asked about


@pytest.mark.parametrize("tool_choice", [NAMED, "required"], ids=["named", "required"])
def test_forced_tool_calls_fit_their_schema_streamed(oai: openai.OpenAI,
                                                     tool_choice: Any) -> None:
    stream = oai.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS,
                                         tool_choice=tool_choice, n=N, temperature=1.0, seed=SEED,
                                         max_tokens=400, stream=True,
                                         parallel_tool_calls=False)
    calls: dict[tuple[int, int], dict[str, Any]] = {}
    finish: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            assert not choice.delta.content, choice.delta  # the answer is the call
            finish[choice.index] = choice.finish_reason or finish.get(choice.index, "")
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault((choice.index, delta.index),
                                        {"id": None, "name": None, "arguments": ""})
                call["id"] = call["id"] or delta.id
                call["name"] = call["name"] or delta.function.name
                call["arguments"] += delta.function.arguments or ""
    only = "get_weather" if tool_choice is NAMED else None
    # A call is sent whole once complete, so even an answer cut by max_tokens (finish_reason
    # "length") would carry no partial call; with no free whitespace none is cut at 400 tokens.
    cut = {i for i, reason in finish.items() if reason == "length"}
    assert not cut, finish
    assert {index for index, _ in calls} | cut == set(range(N)), (calls, finish)
    assert set(finish.values()) - {"length"} == {"stop" if only else "tool_calls"}, finish
    calls = {k: v for k, v in calls.items() if k[0] not in cut}
    for call in calls.values():
        assert call["id"], call
        assert_call_fits(call["name"], call["arguments"], only)


def test_required_parallel_calls_are_bounded_and_complete(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS,
                                    tool_choice="required", n=N, temperature=1.0, seed=SEED, max_tokens=200)
    for choice in r.choices:
        # at most one call per offered function (maxItems); a cut answer keeps its complete calls
        assert choice.finish_reason in ("tool_calls", "length"), choice
        assert choice.message.tool_calls and not choice.message.content, choice
        assert len(choice.message.tool_calls) <= len(TOOLS), choice
        for call in choice.message.tool_calls:
            assert_call_fits(call.function.name, call.function.arguments)


# ---- forced calls in the budget they need (issue 23 item 4) ----
# Before: the grammar allowed free JSON whitespace and an unbounded array, so SmolLM2 at
# temperature 1.0 spent its budget on `[{\n    "name": ...\n  ,\n ...}\n\n,\n\n{...` and repeated
# calls; an answer cut by max_tokens came back with that raw text as content and no call.
# Samples: one request of n=N, seeded SEED ... SEED + M - 1. Before the fix 2 of 5 answers were
# cut at 80 tokens: all 10 fitting by chance has probability 0.6**10 < 1 %, per parametrization.
M = N
ONE_TOOL = TOOLS[:1]
Calls = dict[int, list[dict[str, Any]]]  # sample -> its calls (id, name, arguments)


def _streamed(stream: Any) -> tuple[Calls, dict[int, str], str]:
    calls: dict[int, dict[int, dict[str, Any]]] = {}
    finish: dict[int, str] = {}
    content = ""
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish[choice.index] = choice.finish_reason or finish.get(choice.index, "")
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(choice.index, {}).setdefault(
                    delta.index, {"id": None, "name": None, "arguments": ""})
                call["id"] = call["id"] or delta.id
                call["name"] = call["name"] or delta.function.name
                call["arguments"] += delta.function.arguments or ""
    return {i: [c for _, c in sorted(cs.items())] for i, cs in calls.items()}, finish, content


def _whole(r: Any) -> tuple[Calls, dict[int, str], str]:
    calls = {c.index: [{"id": t.id, "name": t.function.name, "arguments": t.function.arguments}
                       for t in c.message.tool_calls or ()] for c in r.choices}
    return calls, {c.index: c.finish_reason for c in r.choices}, \
        "".join(c.message.content or "" for c in r.choices)


def ask_forced(oai: openai.OpenAI, samples: int, stream: bool, **kwargs: Any
               ) -> tuple[Calls, dict[int, str], str]:
    """``samples`` answers at temperature 1.0 (requests of at most ``N``, sent together):
    each sample's calls, its finish reason, and all the content text sent."""
    def one(first: int) -> tuple[Calls, dict[int, str], str]:
        r = oai.chat.completions.create(model=MODEL, messages=ASK, temperature=1.0,
                                        n=min(N, samples - first), seed=SEED + first,
                                        stream=stream, **kwargs)
        calls, finish, content = _streamed(r) if stream else _whole(r)
        return ({first + i: c for i, c in calls.items()},
                {first + i: f for i, f in finish.items()}, content)

    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(one, range(0, samples, N)))
    calls: Calls = {}
    finish: dict[int, str] = {}
    for c, f, _ in parts:
        calls |= c
        finish |= f
    assert sorted(finish) == list(range(samples)), finish
    return calls, finish, "".join(content for _, _, content in parts)


@pytest.mark.parametrize("tools", [ONE_TOOL, TOOLS], ids=["one-function", "two-functions"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_required_at_80_tokens_returns_a_fitting_call_every_time(
        oai: openai.OpenAI, tools: list[dict[str, Any]], stream: bool) -> None:
    calls, finish, content = ask_forced(oai, M, stream, tools=tools, tool_choice="required",
                                        max_tokens=80)
    bad = {}
    for index in range(M):
        got = calls.get(index, [])
        try:
            assert got, "no call"
            assert len(got) <= len(tools), "more calls than offered functions"  # maxItems
            for call in got:
                assert call["id"], call
                assert_call_fits(call["name"], call["arguments"])
        except (AssertionError, ValueError, jsonschema.ValidationError) as exc:
            bad[index] = (finish[index], str(exc)[:200], got)
    cut = sum(reason == "length" for reason in finish.values())
    print(f"\n{len(tools)} tools, stream={stream}: {M - len(bad)} of {M} fit, "
          f"{cut} cut by max_tokens (complete calls kept), content {len(content)} chars")
    assert not bad, bad
    assert not content, content  # the answer is the calls
    assert set(finish.values()) <= {"tool_calls", "length"}, finish


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_no_parallel_calls_gives_exactly_one_call(oai: openai.OpenAI, stream: bool) -> None:
    calls, finish, content = ask_forced(oai, M, stream, tools=TOOLS, tool_choice="required",
                                        max_tokens=80, parallel_tool_calls=False)
    assert not content and set(finish.values()) == {"tool_calls"}, (content, finish)
    for index in range(M):
        assert len(calls.get(index, ())) == 1, (index, calls.get(index))
        assert_call_fits(calls[index][0]["name"], calls[index][0]["arguments"])


@pytest.mark.parametrize("tool_choice", [NAMED, "required"], ids=["named", "required"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_cut_forced_call_leaves_no_grammar_text(oai: openai.OpenAI, tool_choice: Any,
                                                  stream: bool) -> None:
    """max_tokens 3 cuts every answer inside its first call (`{"city":"` or `[{"name":"`): no
    call, and no raw JSON as content (streamed: no partial arguments sent either)."""
    calls, finish, content = ask_forced(oai, 4, stream, tools=TOOLS, tool_choice=tool_choice,
                                        max_tokens=3)
    assert not content and not any(calls.values()), (content, calls)
    assert set(finish.values()) == {"length"}, finish


def test_tools_with_response_format_give_a_fitting_call_or_fitting_content(
        oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, n=N, temperature=1.0, seed=SEED, max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}})
    cut = 0
    for choice in r.choices:
        if choice.finish_reason == "length":  # cut by max_tokens: neither is complete
            cut += 1
            continue
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            for call in choice.message.tool_calls:
                assert_call_fits(call.function.name, call.function.arguments)
        else:
            assert_fits(choice.message.content or "")
    assert cut <= 2, [c.finish_reason for c in r.choices]


# ---- bad constraints: 4xx in each protocol's shape, and the server keeps serving ----

MANY_BOUNDS = {"type": "object", "properties": {
    f"p{i}": {"type": "string", "maxLength": 100 + i} for i in range(20)}}
BAD = {  # name -> (structured_outputs, words the message must hold)
    "invalid-schema": ({"json": {"type": "objectx"}}, "objectx"),
    "unsupported-regex": ({"regex": "(unclosed"}, "regex"),
    "empty-choice": ({"choice": []}, "choice"),
    "two-kinds": ({"regex": "a+", "choice": ["a"]}, "one kind"),
    "wrong-type": ({"choice": "yes"}, "choice"),
    "too-costly": ({"json": MANY_BOUNDS}, "bounded repetitions"),
    "too-costly-structural-tag": ({"structural_tag": json.dumps({
        "type": "structural_tag", "format": {"type": "json_schema", "json_schema": MANY_BOUNDS}})},
        "bounded repetitions"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_constraint_is_a_400_on_http_protocols(predictor, http: httpx.Client,
                                                   case: str) -> None:
    so, words = BAD[case]
    start = len(predictor.log())
    answers = {
        "openai": http.post("/openai/v1/completions", json={
            "model": MODEL, "prompt": "x", "max_tokens": 5, "structured_outputs": so}),
        "openai-stream": http.post("/openai/v1/chat/completions", json={
            "model": MODEL, "messages": ASK, "max_tokens": 5, "stream": True,
            "structured_outputs": so}),
        "v2": http.post(f"/v2/models/{MODEL}/infer", json=v2_body(
            ["x"], max_tokens=5, structured_outputs=json.dumps(so))),
        "generate": http.post(f"/v2/models/{MODEL}/generate", json={
            "text_input": "x", "parameters": {"max_tokens": 5, "structured_outputs": so}}),
        "generate_stream": http.post(f"/v2/models/{MODEL}/generate_stream", json={
            "text_input": "x", "parameters": {"max_tokens": 5, "structured_outputs": so}}),
        "v1": http.post(f"/v1/models/{MODEL}:predict", json={
            "instances": ["x"], "parameters": {"max_tokens": 5, "structured_outputs": so}}),
    }
    for name, r in answers.items():
        assert r.status_code == 400, (name, r.status_code, r.text)
        error = r.json()["error"]
        message = error["message"] if name.startswith("openai") else error
        assert words.lower() in message.lower(), (name, message)
    assert "Traceback" not in predictor.log()[start:]
    assert_still_serving(http)


def test_bad_constraints_on_grpc_model_infer_and_stream(predictor, http: httpx.Client) -> None:
    import grpc

    for case in sorted(BAD):
        so, words = BAD[case]
        with pytest.raises(grpc.RpcError) as err:
            grpc_infer(predictor.grpc_port, ["x"], {"max_tokens": 5,
                                                    "structured_outputs": json.dumps(so)})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err.value)
        assert words.lower() in (err.value.details() or "").lower(), (case, err.value)
    requests = [{"prompt": "x", "inputs": {"stream": True}, "parameters": {
        "max_tokens": 5, "structured_outputs": json.dumps(BAD[case][0])}} for case in sorted(BAD)]
    requests.append({"prompt": "Is Paris in France?", "inputs": {"stream": True}, "parameters": {
        "max_tokens": 5, "structured_outputs": json.dumps({"choice": CHOICES})}})
    answers = run_client(grpc_url(predictor), "stream", requests)
    for case, pieces in zip(sorted(BAD), answers, strict=False):
        assert len(pieces) == 1 and BAD[case][1].lower() in pieces[0]["error"].lower(), pieces
    # the same stream still answers, under the constraint
    assert "".join(p["outputs"]["text_output"][0] for p in answers[-1]) in CHOICES
    assert_still_serving(http)


def test_bad_tool_choice_and_tools_are_openai_400s(oai: openai.OpenAI,
                                                   http: httpx.Client) -> None:
    cases = {
        "not-offered": {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "bad-parameters": {"tool_choice": "required", "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "objectx"}}}]},
        "too-costly-parameters": {"tool_choice": NAMED, "tools": [
            {"type": "function", "function": {"name": "get_weather",
                                              "parameters": MANY_BOUNDS}}]},
        "constraint-and-named-tool": {"tool_choice": NAMED, "extra_body": {
            "structured_outputs": {"choice": CHOICES}}},
    }
    for name, extra in cases.items():
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as err:
                oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5,
                                            stream=stream, **({"tools": TOOLS} | extra))
            assert err.value.status_code == 400, (name, err.value)
    assert_still_serving(http)
