"""Fast tier: the ``structured_outputs`` parameter's decoding and bounds, and the rewriting of
forced tool calls (JSON text -> OpenAI tool calls, whole and streamed). No engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from runtime.engine import structured, vllm_tools
from runtime.errors import ClientError

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
          "required": ["city"]}


@pytest.mark.parametrize("value", [{"json": SCHEMA}, json.dumps({"json": SCHEMA}),
                                   {"json": json.dumps(SCHEMA)}])
def test_object_and_json_string_decode_to_the_same_constraint(value: Any) -> None:
    assert structured.decode(value) == {"json": SCHEMA}


@pytest.mark.parametrize("value", [{"choice": ["a", "b"]}, {"regex": "[0-9]+"},
                                   {"grammar": 'root ::= "x"'}, {"json_object": True},
                                   {"json": SCHEMA, "disable_any_whitespace": True}])
def test_every_kind_passes_through_unchanged(value: dict[str, Any]) -> None:
    assert structured.decode(json.dumps(value)) == value


@pytest.mark.parametrize("value, words", [
    ("{not json", "malformed JSON"),
    (5, "must be an object"),
    ([], "must be an object"),
    ({}, "exactly one kind"),
    ({"regex": "a", "choice": ["a"]}, "got regex, choice"),
    ({"choice": []}, "non-empty list"),
    ({"choice": "yes"}, "non-empty list"),
    ({"choice": ["a", 1]}, "non-empty list"),
    ({"json": 5}, "must be a JSON schema"),
    ({"json": "{bad"}, "malformed JSON"),
    ({"json_object": False}, "must be true"),
    ({"regex": ""}, "non-empty string"),
    ({"grammar": 3}, "non-empty string"),
    ({"jsn": {}}, "unknown key"),
])
def test_bad_constraints_are_client_errors(value: Any, words: str) -> None:
    with pytest.raises(ClientError, match=words):
        structured.decode(value)


def test_distinct_bounded_repetitions_are_bounded() -> None:
    ok = {"type": "object", "properties": {
        f"p{i}": {"type": "string", "maxLength": 100 + i} for i in range(8)}}
    structured.decode({"json": ok})
    same = {"type": "object", "properties": {
        f"p{i}": {"type": "string", "maxLength": 100} for i in range(50)}}
    structured.decode({"json": same})  # one distinct bound, compiled once
    too_many = {"type": "array", "items": [
        {"type": "string", "pattern": f"[a-z]{{1,{i}}}"} for i in range(2, 12)]}
    with pytest.raises(ClientError, match="bounded repetitions"):
        structured.decode({"json": too_many})
    with pytest.raises(ClientError, match="bounded repetitions"):
        structured.decode({"regex": "".join(f"a{{{i}}}" for i in range(2, 12))})
    # the documented numbers themselves (README: 64 KiB, 1024 choices), at their boundaries
    structured.decode({"regex": "a" * 64 * 1024})
    with pytest.raises(ClientError, match="too large"):
        structured.decode({"regex": "a" * (64 * 1024 + 1)})
    structured.decode({"choice": [str(i) for i in range(1024)]})
    with pytest.raises(ClientError, match="at most"):
        structured.decode({"choice": [str(i) for i in range(1025)]})


# ---- forced tool calls ----

def test_named_call_arguments_are_the_json_answer() -> None:
    forced = vllm_tools.ForcedTools("get_weather")
    assert forced.calls('{"city": "Paris"}') == [("get_weather", '{"city": "Paris"}')]
    assert forced.calls('{"city": "Par') == []  # cut by max_tokens: no call


def test_required_calls_come_from_the_array() -> None:
    forced = vllm_tools.ForcedTools(None)
    text = '[{"name": "a", "parameters": {"x": 1}}, {"name": "b", "parameters": {}}]'
    assert forced.calls(text) == [("a", '{"x": 1}'), ("b", "{}")]
    assert forced.calls('[{"name": "a", "parameters": {"x": ') == []  # cut: no call
    assert forced.calls('{"name": "a"}') == []


def _events(pieces: list[str], finish: str) -> list[str]:
    out = [json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
    out += [json.dumps({"choices": [{"index": 0, "delta": {"content": p}}]}) for p in pieces]
    out.append(json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
    return [f"data: {e}\n\n" for e in out] + ["data: [DONE]\n\n"]


async def _collect(forced: vllm_tools.ForcedTools, events: list[str]) -> list[str]:
    async def gen() -> AsyncIterator[str]:
        for e in events:
            yield e

    return [e async for e in forced.stream(gen())]


@pytest.mark.parametrize("name, pieces, expected", [
    ("get_weather", ['{"ci', 'ty": "Pa', 'ris"}'], [("get_weather", '{"city": "Paris"}')]),
    (None, ['[{"name": "a", "param', 'eters": {"x"', ': 1}}, {"name": "b", ',
            '"parameters": {}}]'], [("a", '{"x": 1}'), ("b", "{}")]),
])
def test_streamed_deltas_join_to_the_same_calls(name: str | None, pieces: list[str],
                                                expected: list[tuple[str, str]]) -> None:
    out = asyncio.run(_collect(vllm_tools.ForcedTools(name), _events(pieces, "stop")))
    assert out[-1] == "data: [DONE]\n\n"
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for event in out[:-1]:
        choice = json.loads(event.removeprefix("data: "))["choices"][0]
        assert not choice["delta"].get("content")
        finish = choice.get("finish_reason") or finish
        for d in choice["delta"].get("tool_calls", ()):
            call = calls.setdefault(d["index"], {"name": None, "arguments": "", "id": None})
            call["id"] = call["id"] or d.get("id")
            call["name"] = call["name"] or d["function"].get("name")
            call["arguments"] += d["function"].get("arguments") or ""
    got = [(c["name"], c["arguments"]) for _, c in sorted(calls.items())]
    assert [(n, json.loads(a)) for n, a in got] == [(n, json.loads(a)) for n, a in expected]
    assert all(c["id"] for c in calls.values())
    assert finish == ("stop" if name else "tool_calls")
