"""Fast tier: every constraint is counted the same way, in every form it can arrive (issue 24,
item 2), and the list-valued sampling parameters are capped (item 3). No engine.

The compile bound (``runtime/engine/structured.py``): at most ``MAX_DISTINCT_BOUNDS`` (8)
distinct bounded repetitions per request, whether they come as a JSON schema, inside a
structural tag (``structured_outputs.structural_tag``, ``response_format`` of type
``structural_tag`` in both of vLLM's shapes), as ``patternProperties`` keys, as float bounds,
as a schema given as a JSON string, or in the tools' parameters. Each test is at the boundary:
8 accepted, 9 refused.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime.engine import structured, vllm_openai
from runtime.errors import ClientError
from runtime.limits import Limits

LIMIT = structured.MAX_DISTINCT_BOUNDS
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}


def schema(count: int, bound: Any = lambda i: 100 + i) -> dict[str, Any]:
    """An object with ``count`` string properties of distinct ``maxLength``."""
    return {"type": "object", "properties": {
        f"p{i}": {"type": "string", "maxLength": bound(i)} for i in range(count)}}


def structural_tag(count: int) -> dict[str, Any]:
    """vLLM's (xgrammar's) current structural tag: the schema inside a ``json_schema`` format."""
    return {"type": "structural_tag", "format": {
        "type": "triggered_tags", "triggers": ["<f>"], "tags": [
            {"type": "tag", "begin": "<f>", "end": "</f>",
             "content": {"type": "json_schema", "json_schema": schema(count)}}]}}


def legacy_structural_tag(count: int) -> dict[str, Any]:
    """vLLM's legacy shape: ``structures`` of begin/schema/end, and ``triggers``."""
    return {"type": "structural_tag", "triggers": ["<f>"], "structures": [
        {"begin": "<f>", "schema": schema(count), "end": "</f>"}]}


def refused(call: Any) -> str:
    with pytest.raises(ClientError, match="bounded repetitions") as err:
        call()
    return err.value.message


# ---- the structured_outputs parameter (v2 REST, generate, KServe v1, gRPC) ----

@pytest.mark.parametrize("make", [structural_tag, legacy_structural_tag])
def test_structural_tag_schemas_are_counted(make: Any) -> None:
    structured.decode({"structural_tag": json.dumps(make(LIMIT))})
    refused(lambda: structured.decode({"structural_tag": json.dumps(make(LIMIT + 1))}))


def test_pattern_properties_keys_are_counted() -> None:
    def props(count: int) -> dict[str, Any]:
        return {"json": {"type": "object", "patternProperties": {
            f"^[a-z]{{1,{100 + i}}}$": {"type": "integer"} for i in range(count)}}}

    structured.decode(props(LIMIT))
    refused(lambda: structured.decode(props(LIMIT + 1)))


def test_float_bounds_are_counted_and_equal_to_their_integer() -> None:
    structured.decode({"json": schema(LIMIT, lambda i: 100.0 + i)})
    refused(lambda: structured.decode({"json": schema(LIMIT + 1, lambda i: 100.0 + i)}))
    # 100 and 100.0 are one bound (one compiled repetition), not two
    mixed = schema(LIMIT, lambda i: 100 + i)
    mixed["properties"] |= {f"q{i}": {"type": "string", "maxLength": 100.0 + i}
                            for i in range(LIMIT)}
    structured.decode({"json": mixed})


def test_structural_tag_repeat_format_and_regex_are_counted() -> None:
    def tag(count: int) -> str:
        return json.dumps({"type": "structural_tag", "format": {"type": "sequence", "elements": [
            {"type": "repeat", "min": 0, "max": 300 + i,
             "content": {"type": "regex", "pattern": "[a-z]"}} for i in range(count // 2)] + [
            {"type": "regex", "pattern": f"[a-z]{{1,{500 + i}}}"}
            for i in range(count - count // 2)]}})

    structured.decode({"structural_tag": tag(LIMIT)})
    refused(lambda: structured.decode({"structural_tag": tag(LIMIT + 1)}))


def test_lark_range_repetitions_are_counted() -> None:
    def grammar(count: int) -> str:
        return "start: " + " ".join(f'/[a-z]/~1..{300 + i}' for i in range(count))

    structured.decode({"grammar": grammar(LIMIT)})
    refused(lambda: structured.decode({"grammar": grammar(LIMIT + 1)}))


def test_whitespace_pattern_is_counted_with_its_constraint() -> None:
    value = {"regex": "".join(f"a{{{i}}}" for i in range(2, 2 + LIMIT)),
             "whitespace_pattern": "[ ]{0,7}"}
    refused(lambda: structured.decode(value))


@pytest.mark.parametrize("spec", [
    {"json": schema(LIMIT + 1, lambda i: str(100 + i))},  # "100": xgrammar refuses, others may not
    {"regex": "".join(f"a{{,{100 + i}}}" for i in range(LIMIT + 1))},  # {,n}
    {"regex": "".join(f"a{{ 3 , {100 + i} }}" for i in range(LIMIT + 1))},  # spaces
    {"regex": "".join(f"a{{{100 + i},}}" for i in range(LIMIT + 1))},  # {m,}
    # a property *named* like a keyword still has its own schema walked
    {"json": {"type": "object", "properties": {"maxLength": schema(LIMIT + 1)}}},
    # a legacy structural tag whose schema is a JSON string
    {"structural_tag": json.dumps({"structures": [
        {"begin": "<f>", "schema": json.dumps(schema(LIMIT + 1)), "end": "</f>"}],
        "triggers": ["<f>"]})},
    # a grammar (llguidance Lark) with an inline JSON schema
    {"grammar": "start: %json " + json.dumps(schema(LIMIT + 1))},
])
def test_every_spelling_of_a_bound_is_counted(spec: dict[str, Any]) -> None:
    refused(lambda: structured.decode(spec))


@pytest.mark.parametrize("text", ["{" + " " * 60_000, '"maxLength":' + " " * 60_000,
                                  "~" + " " * 60_000, "{1," + " " * 60_000])
def test_counting_is_linear_in_the_text(text: str) -> None:
    """The scanners have optional parts next to each other ("{", spaces, optional digits):
    written with backtracking quantifiers, the first of these took 171 s."""
    import time

    start = time.monotonic()
    for kind in ("grammar", "regex"):
        structured.decode({kind: text})
    assert time.monotonic() - start < 2


def test_cheap_repetitions_are_not_counted() -> None:
    structured.decode({"regex": "a{0}b{1}c{0,1}d{1,}e{0,}f{}g?h*i+" * 20})
    structured.decode({"json": {"type": "object", "properties": {
        f"p{i}": {"type": "integer", "minimum": i, "maximum": 1000 + i, "minLength": 1}
        for i in range(LIMIT + 1)}}})


# ---- the OpenAI routes: structured_outputs, response_format (every type), tools ----

@pytest.mark.parametrize("kind,base", [("chat", CHAT), ("completion", COMPLETION)])
@pytest.mark.parametrize("make", [structural_tag, legacy_structural_tag])
def test_openai_response_format_structural_tag_is_counted(kind: str, base: dict[str, Any],
                                                          make: Any) -> None:
    vllm_openai.parse(kind, {**base, "response_format": make(LIMIT)})
    message = refused(lambda: vllm_openai.parse(kind, {**base, "response_format": make(LIMIT + 1)}))
    assert "response_format" in message


@pytest.mark.parametrize("kind,base", [("chat", CHAT), ("completion", COMPLETION)])
def test_openai_structured_outputs_structural_tag_is_counted(kind: str,
                                                             base: dict[str, Any]) -> None:
    def body(count: int) -> dict[str, Any]:
        return {**base, "structured_outputs": {"structural_tag": json.dumps(
            structural_tag(count))}}

    vllm_openai.parse(kind, body(LIMIT))
    refused(lambda: vllm_openai.parse(kind, body(LIMIT + 1)))


@pytest.mark.parametrize("kind,base", [("chat", CHAT), ("completion", COMPLETION)])
def test_openai_json_schema_given_as_a_string_is_counted(kind: str, base: dict[str, Any]) -> None:
    vllm_openai.parse(kind, {**base, "structured_outputs": {"json": json.dumps(schema(LIMIT))}})
    refused(lambda: vllm_openai.parse(kind, {**base, "structured_outputs": {
        "json": json.dumps(schema(LIMIT + 1))}}))


def test_openai_response_format_json_schema_is_counted() -> None:
    def body(count: int) -> dict[str, Any]:
        return {**CHAT, "response_format": {"type": "json_schema", "json_schema": {
            "name": "s", "schema": schema(count)}}}

    vllm_openai.parse("chat", body(LIMIT))
    refused(lambda: vllm_openai.parse("chat", body(LIMIT + 1)))


def _tools(count: int, first: int = 100) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {
        "name": f"f{i}", "parameters": {"type": "object", "properties": {
            "x": {"type": "string", "maxLength": first + i}}}}} for i in range(count)]


@pytest.mark.parametrize("tool_choice", ["required", "auto",
                                         {"type": "function", "function": {"name": "f0"}}])
def test_tool_parameters_are_counted_when_they_constrain(tool_choice: Any) -> None:
    vllm_openai.parse("chat", {**CHAT, "tools": _tools(LIMIT), "tool_choice": tool_choice})
    refused(lambda: vllm_openai.parse("chat", {**CHAT, "tools": _tools(LIMIT + 1),
                                               "tool_choice": tool_choice}))
    # tool_choice "none": nothing is compiled from the tools
    vllm_openai.parse("chat", {**CHAT, "tools": _tools(LIMIT + 1), "tool_choice": "none"})


def test_one_request_is_counted_as_a_whole() -> None:
    """Tools in auto mode and a response_format compile into one grammar (vLLM's "a call
    that fits, or content that fits" tag): their bounds share the one budget."""
    half = LIMIT // 2
    rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema(half)}}
    vllm_openai.parse("chat", {**CHAT, "tools": _tools(LIMIT - half, first=500),
                               "response_format": rf})
    refused(lambda: vllm_openai.parse("chat", {**CHAT, "tools": _tools(LIMIT - half + 1, 500),
                                               "response_format": rf}))


# ---- list-valued sampling parameters: each capped, at the exact boundary ----

TOKEN_LISTS = {  # parameter -> a value with n entries
    "logit_bias": lambda n: {str(i): 1.0 for i in range(n)},
    "allowed_token_ids": lambda n: list(range(n)),
    "stop_token_ids": lambda n: list(range(n)),
}


@pytest.mark.parametrize("kind,base", [("chat", CHAT), ("completion", COMPLETION)])
@pytest.mark.parametrize("name", sorted(TOKEN_LISTS))
def test_token_id_lists_are_capped(kind: str, base: dict[str, Any], name: str) -> None:
    cap = Limits().max_token_ids
    assert cap == 1024
    request = vllm_openai.parse(kind, {**base, name: TOKEN_LISTS[name](cap)})
    vllm_openai.work(kind, request, Limits())
    request = vllm_openai.parse(kind, {**base, name: TOKEN_LISTS[name](cap + 1)})
    with pytest.raises(ClientError, match=f"{name}.*{cap}.*--max_token_ids"):
        vllm_openai.work(kind, request, Limits())
    vllm_openai.work(kind, request, Limits(max_token_ids=None))  # unbounded when unset


@pytest.mark.parametrize("kind,base", [("chat", CHAT), ("completion", COMPLETION)])
def test_bad_words_are_capped(kind: str, base: dict[str, Any]) -> None:
    cap = Limits().max_bad_words
    assert cap == 128
    request = vllm_openai.parse(kind, {**base, "bad_words": [f"w{i}" for i in range(cap)]})
    vllm_openai.work(kind, request, Limits())
    request = vllm_openai.parse(kind, {**base, "bad_words": [f"w{i}" for i in range(cap + 1)]})
    with pytest.raises(ClientError, match=f"bad_words.*{cap}.*--max_bad_words"):
        vllm_openai.work(kind, request, Limits())
    vllm_openai.work(kind, request, Limits(max_bad_words=None))


def test_caps_are_configurable() -> None:
    request = vllm_openai.parse("chat", {**CHAT, "stop_token_ids": [1, 2, 3]})
    vllm_openai.work("chat", request, Limits(max_token_ids=3))
    with pytest.raises(ClientError, match="--max_token_ids"):
        vllm_openai.work("chat", request, Limits(max_token_ids=2))
