"""Tool calls that fit their schemas: ``tool_choice`` naming a function, or ``"required"``.

Why the runtime decodes these itself: in vLLM 0.32 a tool parser with an xgrammar structural
tag (``hermes`` among them) takes over named and required tool choice, and for a tool without
``"strict": true`` its tag pins the call's envelope but leaves ``arguments`` free (any JSON):
``get_weather`` (parameters: an object with a string ``city``) came back with arguments
``"Paris"`` or ``[{"nopie": "pink"}]``. Without a tool parser vLLM refuses both choices.

Here, whatever the parser (or none), a forced call is decoded under one JSON schema built by
vLLM's own ``get_json_schema_from_tools`` (named: the function's ``parameters``; required: an
array of ``{"name", "parameters"}`` objects, one ``anyOf`` branch per offered function, at most
one item per offered function: ``maxItems``), compiled by xgrammar into a grammar that allows
no free whitespace (vLLM 0.32 reads ``disable_any_whitespace`` from the server's config only,
not from a request), with the request's ``tool_choice`` set to ``"none"`` so that vLLM's
serving code returns the JSON as text. The answer is then rewritten into OpenAI tool calls, each
call only once its JSON is complete: an answer cut by ``max_tokens`` keeps the calls completed
before the cut (or none) and never returns the grammar's text as content, whole or streamed.
``"auto"`` stays with the configured parser; tools that do not say ``"strict": false`` are
marked strict, so a parser with a structural tag pins their arguments too (and ``tools`` with
``response_format`` become "a call that fits, or content that fits").
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import xgrammar
from vllm.entrypoints.generate.base.protocol import FunctionCall, ToolCall
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionResponse,
)
from vllm.exceptions import VLLMValidationError
from vllm.renderers.chat_utils import make_tool_call_id
from vllm.sampling_params import SamplingParams, StructuredOutputsParams
from vllm.tool_parsers.utils import get_json_schema_from_tools

from runtime.engine import structured
from runtime.errors import ClientError


def check(request: Any) -> None:
    """Bound every constraint a chat or completion request carries, together (its
    ``structured_outputs``, its ``response_format`` of any type, and the tools' parameter
    schemas when they constrain: named, required, or ``auto`` with a structural-tag parser)."""
    constraints = structured.request_constraints(request)
    if getattr(request, "tools", None) and getattr(request, "tool_choice", None) != "none":
        constraints.append(
            ("json", [t.function.parameters for t in request.tools], "tools.parameters"))
    structured.check_all(constraints)


def verify(request: Any, engine_client: Any) -> None:
    """Run vLLM's own check of a request's constraint (the one its input processor runs when
    the request reaches the engine) before the request is submitted.

    Why twice: for a streamed request vLLM runs it inside the stream generator, which logs a
    traceback at ERROR for a client's bad regex or schema before answering 400; checked here,
    a bad constraint is a one-line 400 on every protocol, streamed or not."""
    if engine_client is None:
        return
    processor = engine_client.input_processor
    for_backend(request, getattr(processor.structured_outputs_config, "backend", "auto"))
    extract = getattr(request, "extract_structured_outputs", None)
    try:  # vLLM builds the constraint here, and refuses some shapes only now (a json_schema
        # response_format with a name and no schema): a client's 400, not a server fault
        constraint = extract() if extract is not None else None
    except (VLLMValidationError, ValueError, TypeError) as exc:
        raise ClientError(str(exc)) from None
    if constraint is None:
        return
    params = SamplingParams(structured_outputs=dataclasses.replace(constraint))
    try:
        params.verify(processor.model_config, processor.speculative_config,
                      processor.structured_outputs_config, processor.tokenizer)
    except (VLLMValidationError, ValueError) as exc:
        raise ClientError(str(exc)) from None


class _Values:
    """The complete JSON values of a forced answer as its text arrives: the whole object
    (named call, ``level`` 0) or each object of the array (required, ``level`` 1)."""

    def __init__(self, level: int) -> None:
        self.level = level
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.current: list[str] = []

    def feed(self, text: str) -> list[str]:
        done = []
        for ch in text:
            inside = self.depth > self.level
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
                inside = self.depth > self.level
            elif ch in "}]":
                self.depth -= 1
                if inside and self.depth == self.level:
                    self.current.append(ch)
                    done.append("".join(self.current))
                    self.current = []
                    continue
            if inside:
                self.current.append(ch)
        return done


@dataclass
class ForcedTools:
    """A chat request whose tool call the runtime decodes and writes (named or required)."""

    name: str | None  # the named function; None for "required"
    values: dict[int, _Values] = field(default_factory=dict)  # streamed text so far, per choice
    sent: dict[int, int] = field(default_factory=dict)  # calls sent so far, per choice

    def _call(self, text: str) -> tuple[str, str] | None:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        if self.name is not None:
            return self.name, json.dumps(value, ensure_ascii=False)
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return None
        return value["name"], json.dumps(value.get("parameters", {}), ensure_ascii=False)

    def _complete(self, scanner: _Values, text: str) -> list[tuple[str, str]]:
        return [call for call in map(self._call, scanner.feed(text)) if call is not None]

    def calls(self, text: str) -> list[tuple[str, str]]:
        """(name, arguments) of each complete call in an answer: all of them, or those
        completed before a cut by ``max_tokens`` (none if it was cut inside the first)."""
        return self._complete(_Values(0 if self.name is not None else 1), text)

    def finish(self, response: ChatCompletionResponse) -> ChatCompletionResponse:
        """Rewrite each choice's JSON content into tool calls (OpenAI: content null; finish
        ``tool_calls`` for required, ``stop`` for a named function; ``length`` when cut)."""
        for choice in response.choices:
            calls = self.calls(choice.message.content or "")
            choice.message.tool_calls = [
                ToolCall(id=make_tool_call_id(), function=FunctionCall(name=n, arguments=a))
                for n, a in calls]
            choice.message.content = None  # the grammar's text is never the answer
            if self.name is None and calls and choice.finish_reason == "stop":
                choice.finish_reason = "tool_calls"
        return response

    def _delta(self, index: int, piece: str) -> list[dict[str, Any]]:
        scanner = self.values.setdefault(index, _Values(0 if self.name is not None else 1))
        out = []
        for name, arguments in self._complete(scanner, piece):
            n = self.sent.get(index, 0)
            self.sent[index] = n + 1
            out.append({"index": n, "id": make_tool_call_id(), "type": "function",
                        "function": {"name": name, "arguments": arguments}})
        return out

    async def stream(self, events: AsyncIterator[str]) -> AsyncIterator[str]:
        """vLLM's server-sent events with each choice's JSON text turned into tool calls, each
        sent whole (id, name and arguments in one delta) once its JSON is complete, so a cut
        answer has sent only complete calls."""
        try:
            async for event in events:
                payload = event.removeprefix("data: ").strip()
                if not payload.startswith("{"):
                    yield event
                    continue
                obj = json.loads(payload)
                for choice in obj.get("choices") or ():
                    delta = choice.get("delta") or {}
                    piece = delta.pop("content", None)
                    index = int(choice.get("index", 0))
                    if piece:
                        calls = self._delta(index, piece)
                        if calls:
                            delta["tool_calls"] = calls
                    elif piece is not None and "role" in delta:
                        delta["content"] = None
                    choice["delta"] = delta
                    if self.name is None and choice.get("finish_reason") == "stop" and \
                            self.sent.get(index):
                        choice["finish_reason"] = "tool_calls"
                yield f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()  # aborts the engine request when the client went away


def force(request: Any) -> ForcedTools | None:
    """Prepare a chat request for decoding its tool call under the tools' schema (named or
    required ``tool_choice``); for ``"auto"``, mark tools strict unless they opt out."""
    tools = getattr(request, "tools", None)
    choice = getattr(request, "tool_choice", None)
    if not tools or choice in (None, "none"):
        return None
    if isinstance(choice, ChatCompletionNamedToolChoiceParam):
        name: str | None = choice.function.name
    elif choice == "required":
        name = None
    else:
        request.tools = [_strict(t) for t in tools]
        return None
    try:
        schema = get_json_schema_from_tools(tool_choice=choice, tools=tools,
                                            parallel_tool_calls=request.parallel_tool_calls)
    except (VLLMValidationError, ValueError) as exc:  # a name not offered, conflicting $defs
        raise ClientError(str(exc)) from None
    request.structured_outputs = StructuredOutputsParams(grammar=grammar(schema))
    request.response_format = None  # a forced call is the answer (as vLLM's own JSON path)
    request.tool_choice = "none"
    return ForcedTools(name)


def bounded(schema: Any) -> Any:
    """The schema of a forced answer with its calls bounded: vLLM's array of calls has
    ``maxItems`` 1 with ``parallel_tool_calls: false``; otherwise this adds one item per
    offered function (SmolLM2 at temperature 1.0 repeats a call until ``max_tokens``)."""
    if isinstance(schema, dict) and schema.get("type") == "array" and "maxItems" not in schema:
        schema = {**schema, "maxItems": max(1, len(schema.get("items", {}).get("anyOf", ())))}
    return schema


_FORCED: dict[str, Any] = {}  # a forced answer's grammar -> its bounded schema (few, reused)


def grammar(schema: Any) -> str:
    """xgrammar's grammar (EBNF) for a forced answer's schema, bounded, with no whitespace
    outside strings: the same compiler vLLM's default backend uses for a JSON schema, with
    ``any_whitespace`` off, which vLLM 0.32 sets only server-wide."""
    schema = bounded(schema)
    text = _grammar(json.dumps(schema, sort_keys=True))
    if len(_FORCED) >= 64:
        _FORCED.clear()
    _FORCED[text] = schema
    return text


def for_backend(request: Any, backend: str) -> None:
    """With a structured-outputs backend other than xgrammar configured (``guidance`` cannot
    read xgrammar's grammar), decode a forced answer under the same bounded schema as JSON:
    without free whitespace for ``guidance`` (its ``x-guidance`` options), with the backend's
    whitespace otherwise."""
    so = getattr(request, "structured_outputs", None)
    schema = _FORCED.get(so.grammar) if so is not None and so.grammar else None
    if schema is None or backend in ("auto", "xgrammar"):
        return
    if backend == "guidance":
        schema = {**schema, "x-guidance": {"whitespace_flexible": False,
                                           "item_separator": ",", "key_separator": ":"}}
    request.structured_outputs = StructuredOutputsParams(json=schema)


@functools.lru_cache(maxsize=64)
def _grammar(schema: str) -> str:
    try:
        return str(xgrammar.Grammar.from_json_schema(schema, any_whitespace=False,
                                                     separators=(",", ":")))
    except Exception as exc:  # xgrammar's errors for a schema it cannot compile
        raise ClientError(f"tools: a function's parameters are not a usable JSON schema: "
                          f"{str(exc)[:300]}") from None


def _strict(tool: Any) -> Any:
    if tool.function.strict is not None:
        return tool
    return tool.model_copy(update={"function": tool.function.model_copy(update={"strict": True})})
