"""runtime/server.py: the event loop the predictor serves on.

Why: KServe's ``ModelServer.start()`` runs ``asyncio.run()`` itself, so ``--event_loop`` was
silently ignored and the predictor served on the default asyncio loop while plain vLLM serves on
uvloop, a cost on every streamed chunk. These tests fail if the flag stops taking effect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import uvloop

from runtime.server import use_event_loop


@pytest.fixture
def restore_policy() -> Iterator[None]:
    before = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(before)


@pytest.mark.parametrize(("kind", "expected"), [
    ("auto", uvloop.Loop), ("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)])
def test_event_loop_flag_picks_the_loop_asyncio_run_creates(
        restore_policy: None, kind: str, expected: type) -> None:
    """--event_loop auto|uvloop|asyncio: asyncio.run (as KServe calls it) runs that loop."""
    use_event_loop(kind)

    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    got = asyncio.run(loop_type())
    assert issubclass(got, expected), got
    if kind == "asyncio":
        assert not issubclass(got, uvloop.Loop)


def test_the_running_predictor_serves_on_uvloop(predictor) -> None:  # noqa: ANN001
    """The real process with default flags logs the loop it runs: uvloop, as vllm serve."""
    assert "event loop: uvloop.Loop" in predictor.log()
