"""Tool calls that fit their schemas: ``tool_choice`` naming a function, or ``"required"``.

Why the runtime decodes these itself: in vLLM 0.32 a tool parser with an xgrammar structural
tag (``hermes`` among them) takes over named and required tool choice, and for a tool without
``"strict": true`` its tag pins the call's envelope but leaves ``arguments`` free (any JSON):
``get_weather`` (parameters: an object with a string ``city``) came back with arguments
``"Paris"`` or ``[{"nopie": "pink"}]``. Without a tool parser vLLM refuses both choices.

Here, whatever the parser (or none), a forced call is decoded under one JSON schema built by
vLLM's own ``get_json_schema_from_tools`` (named: the function's ``parameters``; required: an
array of ``{"name", "parameters"}`` objects, one ``anyOf`` branch per offered function), with
the request's ``tool_choice`` set to ``"none"`` so that vLLM's serving code returns the JSON as
text. The answer is then rewritten into OpenAI tool calls: non-streamed from the parsed JSON,
streamed with vLLM's own named/required streaming extractors, so the deltas are the ones vLLM's
JSON path would send. ``"auto"`` stays with the configured parser; tools that do not say
``"strict": false`` are marked strict, so a parser with a structural tag pins their arguments
too (and ``tools`` with ``response_format`` become "a call that fits, or content that fits").
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from vllm.entrypoints.generate.base.protocol import FunctionCall, ToolCall
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionResponse,
)
from vllm.exceptions import VLLMValidationError
from vllm.renderers.chat_utils import make_tool_call_id
from vllm.sampling_params import SamplingParams, StructuredOutputsParams
from vllm.tool_parsers.streaming import (
    extract_named_tool_call_streaming,
    extract_required_tool_call_streaming,
)
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
    extract = getattr(request, "extract_structured_outputs", None)
    constraint = extract() if extract is not None else None
    if constraint is None or engine_client is None:
        return
    processor = engine_client.input_processor
    params = SamplingParams(structured_outputs=dataclasses.replace(constraint))
    try:
        params.verify(processor.model_config, processor.speculative_config,
                      processor.structured_outputs_config, processor.tokenizer)
    except (VLLMValidationError, ValueError) as exc:
        raise ClientError(str(exc)) from None


@dataclass
class ForcedTools:
    """A chat request whose tool call the runtime decodes and writes (named or required)."""

    name: str | None  # the named function; None for "required"
    texts: dict[int, str] = field(default_factory=dict)  # streamed JSON so far, per choice
    announced: dict[int, bool] = field(default_factory=dict)

    def calls(self, text: str) -> list[tuple[str, str]] | None:
        """(name, arguments) of each call in a complete answer; None if it is not complete
        JSON (the answer was cut by ``max_tokens``)."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        if self.name is not None:
            return [(self.name, json.dumps(value, ensure_ascii=False))]
        if not isinstance(value, list) or not all(
                isinstance(v, dict) and isinstance(v.get("name"), str) for v in value):
            return None
        return [(v["name"], json.dumps(v.get("parameters", {}), ensure_ascii=False))
                for v in value]

    def finish(self, response: ChatCompletionResponse) -> ChatCompletionResponse:
        """Rewrite each choice's JSON content into tool calls (OpenAI: content null; finish
        ``tool_calls`` for required, ``stop`` for a named function)."""
        for choice in response.choices:
            calls = self.calls(choice.message.content or "")
            if calls is None:
                continue  # cut short: the text stays, finish_reason says "length"
            choice.message.tool_calls = [
                ToolCall(id=make_tool_call_id(), function=FunctionCall(name=n, arguments=a))
                for n, a in calls]
            choice.message.content = None
            if self.name is None and choice.finish_reason == "stop":
                choice.finish_reason = "tool_calls"
        return response

    def _delta(self, index: int, piece: str) -> list[dict[str, Any]]:
        previous = self.texts.get(index, "")
        current = previous + piece
        self.texts[index] = current
        if self.name is not None:
            message, announced = extract_named_tool_call_streaming(
                delta_text=piece, function_name=self.name,
                function_name_returned=self.announced.get(index, False), tool_call_idx=None,
                tool_call_id_type="random", tokenizer=None)
        else:
            message, announced = extract_required_tool_call_streaming(
                previous_text=previous, current_text=current, tool_call_idx=None,
                tool_call_id_type="random")
        self.announced[index] = announced
        if message is None or not message.tool_calls:
            return []
        return [tc.model_dump(exclude_none=True) for tc in message.tool_calls]

    async def stream(self, events: AsyncIterator[str]) -> AsyncIterator[str]:
        """vLLM's server-sent events with each choice's JSON text turned into tool-call
        deltas (the first carries the id and the name)."""
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
                    if piece:
                        calls = self._delta(int(choice.get("index", 0)), piece)
                        if calls:
                            delta["tool_calls"] = calls
                    elif piece is not None and "role" in delta:
                        delta["content"] = None
                    choice["delta"] = delta
                    if self.name is None and choice.get("finish_reason") == "stop":
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
    except ValueError as exc:  # a name not offered, conflicting $defs
        raise ClientError(str(exc)) from None
    request.structured_outputs = StructuredOutputsParams(json=schema)
    request.response_format = None  # a forced call is the answer (as vLLM's own JSON path)
    request.tool_choice = "none"
    return ForcedTools(name)


def _strict(tool: Any) -> Any:
    if tool.function.strict is not None:
        return tool
    return tool.model_copy(update={"function": tool.function.model_copy(update={"strict": True})})
