"""The streamed-completion formatter that reads vLLM's outputs as objects (fast tier, no engine).

It replaces one internal method of vLLM's completion serving class: the signature check fails
when a vLLM upgrade changes that method, and the rest checks the pieces it yields."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion

from runtime.engine.base import Delta
from runtime.engine.vllm_stream import ObjectStreamingCompletion, object_streaming
from runtime.errors import ServerError


@dataclass
class Output:  # the fields of vllm.outputs.CompletionOutput the formatter reads
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    cumulative_logprob: float | None = None
    index: int = 0


@dataclass
class Result:  # ... of vllm.outputs.RequestOutput
    outputs: list[Output]
    prompt_token_ids: list[int] | None = None


@dataclass
class Request:
    logprobs: int | None = None


@dataclass
class Source:
    results: list[Result]
    closed: list[bool] = field(default_factory=list)

    async def gen(self) -> AsyncIterator[tuple[int, Result]]:
        try:
            for r in self.results:
                yield 0, r
        finally:
            self.closed.append(True)


def _pieces(results: list[Result], request: Request | None = None) -> tuple[list[Delta], Source]:
    source = Source(results)
    view = object.__new__(ObjectStreamingCompletion)
    gen = view.completion_stream_generator(request or Request(), [], source.gen(), "r1", 0,
                                           "m", 1, None, None)

    async def collect() -> list[Delta]:
        return [d async for d in gen]

    return asyncio.run(collect()), source


def test_replaces_the_method_vllm_calls_with_the_same_signature() -> None:
    ours = inspect.signature(ObjectStreamingCompletion.completion_stream_generator)
    theirs = inspect.signature(OpenAIServingCompletion.completion_stream_generator)
    assert list(ours.parameters) == list(theirs.parameters)


def test_view_shares_the_serving_objects_state() -> None:
    serving = object.__new__(OpenAIServingCompletion)
    serving.__dict__.update(engine_client="engine", default_sampling_params={"top_k": 5})
    view = object_streaming(serving)
    assert isinstance(view, ObjectStreamingCompletion)
    assert view.engine_client == "engine" and view.default_sampling_params == {"top_k": 5}
    assert type(serving) is OpenAIServingCompletion  # the original is untouched


def test_pieces_counts_and_the_final_piece() -> None:
    pieces, source = _pieces([
        Result([Output(" Paris", [1, 2])], prompt_token_ids=[7, 8, 9]),
        Result([Output("", [3])]),  # text held back (a possible stop string)
        Result([Output(".", [4], finish_reason="stop")]),
    ])
    assert [p.text for p in pieces] == [" Paris", ".", ""]
    assert [p.tokens for p in pieces] == [2, 2, 0]  # the held-back token counts into the next
    assert all(p.prompt_tokens == 3 for p in pieces)
    last = pieces[-1]
    assert (last.finish_reason, last.completion_tokens) == ("stop", 4)
    assert all(p.cumulative_logprob is None for p in pieces)  # not asked for
    assert source.closed == [True]


def test_cumulative_logprob_only_when_asked() -> None:
    results = [Result([Output("a", [1], cumulative_logprob=-0.5)], prompt_token_ids=[1]),
               Result([Output("b", [2], finish_reason="length", cumulative_logprob=-1.25)])]
    pieces, _ = _pieces(results, Request(logprobs=0))
    assert [p.cumulative_logprob for p in pieces] == [-0.5, -1.25, -1.25]


def test_an_engine_error_is_a_server_error_without_internals() -> None:
    with pytest.raises(ServerError) as info:
        _pieces([Result([Output("", [], finish_reason="error")], prompt_token_ids=[1])])
    assert str(info.value) == "internal error during generation"


def test_closing_early_closes_the_engine_stream() -> None:
    source = Source([Result([Output(str(i), [i])], prompt_token_ids=[1]) for i in range(5)])
    view = object.__new__(ObjectStreamingCompletion)

    async def first_then_close() -> Any:
        gen = view.completion_stream_generator(Request(), [], source.gen(), "r", 0, "m", 1,
                                               None, None)
        first = await anext(gen)
        await gen.aclose()
        return first

    assert asyncio.run(first_then_close()).text == "0"
    assert source.closed == [True]  # the engine request is aborted


@pytest.mark.parametrize("raised,expected,status", [
    ("validation", "The decoder prompt cannot be empty", 400),  # found once the engine has it
    ("fault", "internal error during generation", 500),  # its text stays in the log
])
def test_engine_errors_are_mapped_as_vllms_stream_did(raised: str, expected: str,
                                                      status: int) -> None:
    from vllm.exceptions import VLLMValidationError

    from runtime.errors import ServingError

    class Failing(Source):
        async def gen(self) -> AsyncIterator[tuple[int, Result]]:
            if raised == "validation":
                raise VLLMValidationError("The decoder prompt cannot be empty")
            raise RuntimeError("secret internals")
            yield  # an async generator

    view = object.__new__(ObjectStreamingCompletion)

    async def first() -> Any:
        gen = view.completion_stream_generator(Request(), [], Failing([]).gen(), "r", 0, "m",
                                               1, None, None)
        return await anext(gen)

    with pytest.raises(ServingError) as info:
        asyncio.run(first())
    assert (str(info.value), info.value.http_status) == (expected, status)
