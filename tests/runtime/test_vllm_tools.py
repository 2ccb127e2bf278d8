"""Fast tier: forced tool calls (``runtime/engine/vllm_tools.py``) without an engine: the
grammar a named or required ``tool_choice`` is decoded under (no free whitespace, no more
calls than the request allows) and what a cut answer becomes (its complete calls, or none;
never the grammar's text as content), whole and streamed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from xgrammar.testing import _is_grammar_accept_string

from runtime.engine import vllm_tools

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["city"],
        "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["C", "F"]}}}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["tz"],
        "properties": {"tz": {"type": "string", "maxLength": 20}}}}},
]
WEATHER = '{"name":"get_weather","parameters":{"city":"Paris"}}'
TIME = '{"name":"get_time","parameters":{"tz":"CET"}}'
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def forced(tool_choice: Any, tools: list[dict[str, Any]] = TOOLS, **extra: Any
           ) -> tuple[vllm_tools.ForcedTools, str]:
    request = ChatCompletionRequest.model_validate({
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools,
        "tool_choice": tool_choice, **extra})
    result = vllm_tools.force(request)
    assert result is not None and request.tool_choice == "none"
    so = request.structured_outputs
    assert so is not None and so.json is None and so.grammar, so
    return result, so.grammar


def accepts(grammar: str, text: str) -> bool:
    return bool(_is_grammar_accept_string(grammar, text))


# ---- the grammar ----

def test_required_allows_one_call_per_offered_function_and_no_whitespace() -> None:
    _, g = forced("required")
    assert accepts(g, f"[{WEATHER}]") and accepts(g, f"[{WEATHER},{TIME}]")
    assert not accepts(g, f"[{WEATHER},{TIME},{WEATHER}]")  # maxItems: 2 functions offered
    assert not accepts(g, "[]")
    # the measured waste: whitespace between and inside calls
    assert not accepts(g, f"[{WEATHER}\n\n,\n\n{TIME}]")
    assert not accepts(g, '[{\n    "name": "get_weather",\n  "parameters": {"city": "Paris"}}]')
    assert not accepts(g, f"[ {WEATHER}]")
    # every call fits its function's schema
    assert not accepts(g, '[{"name":"get_weather","parameters":{"tz":"CET"}}]')
    assert not accepts(g, '[{"name":"nope","parameters":{}}]')
    assert accepts(g, '[{"name":"get_weather","parameters":{"city":"a b, c: d"}}]')  # in strings


def test_one_function_offered_is_one_call() -> None:
    _, g = forced("required", TOOLS[:1])
    assert accepts(g, f"[{WEATHER}]") and not accepts(g, f"[{WEATHER},{WEATHER}]")


def test_no_parallel_calls_is_exactly_one_call() -> None:
    _, g = forced("required", parallel_tool_calls=False)
    assert accepts(g, f"[{TIME}]") and not accepts(g, f"[{WEATHER},{TIME}]")


def test_named_choice_is_the_arguments_without_whitespace() -> None:
    _, g = forced(NAMED)
    assert accepts(g, '{"city":"Paris","unit":"C"}')
    assert not accepts(g, '{ "city": "Paris"}') and not accepts(g, '{"city":"Paris"}\n')
    assert not accepts(g, '{"tz":"CET"}')


def test_bounded_keeps_an_explicit_bound_and_objects() -> None:
    assert vllm_tools.bounded({"type": "array", "maxItems": 1, "items": {"anyOf": [1, 2]}}
                              )["maxItems"] == 1
    assert vllm_tools.bounded({"type": "array", "items": {"anyOf": [1, 2, 3]}})["maxItems"] == 3
    assert "maxItems" not in vllm_tools.bounded({"type": "object"})


# ---- the answer: complete calls, or none; never the grammar's text ----

@pytest.mark.parametrize("text, expected", [
    (f"[{WEATHER},{TIME}]", [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]),
    (f'[{WEATHER},{{"name":"get_time","parameters":{{"tz":"CE', [("get_weather", {"city": "Paris"})]),
    (f"[{WEATHER}", [("get_weather", {"city": "Paris"})]),  # cut before "]"
    ('[{"name":"get_weather","parameters":{"city":"Pa}]', []),  # a brace inside a string
    ('[{"name":"get_weath', []),
    ("", []),
])
def test_required_keeps_the_calls_completed_before_a_cut(
        text: str, expected: list[tuple[str, Any]]) -> None:
    calls = vllm_tools.ForcedTools(None).calls(text)
    assert [(n, json.loads(a)) for n, a in calls] == expected


def test_named_call_is_whole_or_none() -> None:
    f = vllm_tools.ForcedTools("get_weather")
    assert f.calls('{"city":"Paris"}') == [("get_weather", '{"city": "Paris"}')]
    assert f.calls('{"city":"Par') == []


def _response(content: str, finish: str) -> ChatCompletionResponse:
    return ChatCompletionResponse.model_validate({
        "model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 80, "total_tokens": 81},
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": content}}]})


@pytest.mark.parametrize("name, content, finish, calls, reason", [
    (None, f"[{WEATHER},{TIME}]", "stop", 2, "tool_calls"),
    (None, f'[{WEATHER},{{"name":"get_ti', "length", 1, "length"),
    (None, '[{"name":"get_ti', "length", 0, "length"),
    ("get_weather", '{"city":"Paris"}', "stop", 1, "stop"),
    ("get_weather", '{"city":"Pa', "length", 0, "length"),
])
def test_a_cut_answer_has_its_complete_calls_and_no_content(
        name: str | None, content: str, finish: str, calls: int, reason: str) -> None:
    choice = vllm_tools.ForcedTools(name).finish(_response(content, finish)).choices[0]
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == calls and choice.finish_reason == reason
    assert all(c.id and json.loads(c.function.arguments) for c in choice.message.tool_calls)


def _events(pieces: list[str], finish: str) -> list[str]:
    out = [json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
    out += [json.dumps({"choices": [{"index": 0, "delta": {"content": p}}]}) for p in pieces]
    out.append(json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
    return [f"data: {e}\n\n" for e in out] + ["data: [DONE]\n\n"]


def _stream(name: str | None, pieces: list[str], finish: str) -> tuple[list[dict[str, Any]], str]:
    async def gen() -> AsyncIterator[str]:
        for e in _events(pieces, finish):
            yield e

    async def collect() -> list[str]:
        return [e async for e in vllm_tools.ForcedTools(name).stream(gen())]

    out = asyncio.run(collect())
    assert out[-1] == "data: [DONE]\n\n"
    deltas, reason = [], ""
    for event in out[:-1]:
        choice = json.loads(event.removeprefix("data: "))["choices"][0]
        assert not choice["delta"].get("content"), choice  # no grammar text, ever
        reason = choice.get("finish_reason") or reason
        deltas += choice["delta"].get("tool_calls", [])
    return deltas, reason


def test_streamed_calls_are_sent_whole_once_complete() -> None:
    pieces = ['[{"name":"get_we', 'ather","parameters":{"ci', 'ty":"Paris"}},{"na',
              'me":"get_time","parameters":{"tz":"CET"}}]']
    deltas, reason = _stream(None, pieces, "stop")
    assert reason == "tool_calls"
    assert [(d["index"], d["function"]["name"], json.loads(d["function"]["arguments"]))
            for d in deltas] == [(0, "get_weather", {"city": "Paris"}), (1, "get_time", {"tz": "CET"})]
    assert all(d["id"] and d["type"] == "function" for d in deltas)


@pytest.mark.parametrize("name, pieces, calls", [
    (None, ['[{"name":"get_weather","parameters":{"city":"Paris"}},{"name":"get_t', 'ime"'], 1),
    (None, ['[{"name":"get_weather","para'], 0),
    ("get_weather", ['{"city":', '"Pa'], 0),
])
def test_a_cut_stream_sends_only_complete_calls(name: str | None, pieces: list[str],
                                                calls: int) -> None:
    deltas, reason = _stream(name, pieces, "length")
    assert reason == "length" and len(deltas) == calls, deltas
    for d in deltas:
        json.loads(d["function"]["arguments"])


# ---- another structured-outputs backend ----

def test_guidance_backend_gets_the_bounded_schema_without_whitespace() -> None:
    """``guidance`` cannot read xgrammar's grammar (its GBNF conversion fails on it): the same
    bounded schema goes as JSON, with llguidance's own options for no free whitespace."""
    import llguidance
    from vllm.v1.structured_output.backend_guidance import serialize_guidance_grammar
    from vllm.v1.structured_output.backend_types import StructuredOutputOptions

    for backend in ("auto", "xgrammar"):
        request = ChatCompletionRequest.model_validate({
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
            "tool_choice": "required"})
        vllm_tools.force(request)
        g = request.structured_outputs.grammar
        vllm_tools.for_backend(request, backend)
        assert request.structured_outputs.grammar == g
    vllm_tools.for_backend(request, "guidance")
    schema = request.structured_outputs.json
    assert schema["maxItems"] == 2 and schema["x-guidance"]["whitespace_flexible"] is False
    grammar = serialize_guidance_grammar(StructuredOutputOptions.JSON, json.dumps(schema))
    assert llguidance.LLMatcher.validate_grammar(grammar) == ""


def test_a_constraint_vllm_refuses_only_when_built_is_a_client_error() -> None:
    """A json_schema response_format with a name and no schema passes vLLM's request model
    and fails only when vLLM builds the constraint: a 400 (the fuzzer found it as a 500)."""
    import types

    from runtime.engine import vllm_openai
    from runtime.errors import ClientError

    request = vllm_openai.parse("completion", {
        "model": "m", "prompt": "hi",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}})
    processor = types.SimpleNamespace(
        structured_outputs_config=types.SimpleNamespace(backend="auto"))
    with pytest.raises(ClientError) as info:
        vllm_tools.verify(request, types.SimpleNamespace(input_processor=processor))
    assert "structured outputs constraint" in str(info.value)
