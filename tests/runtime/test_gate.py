"""The HTTP front door's outermost layer (``runtime.protocol.gate``): the ASGI lifespan.

A drain cut off at its timeout, or a second signal, makes uvicorn exit at once; it then skips
the lifespan shutdown, and the task waiting for it is cancelled when the event loop ends.
Starlette's router reported that cancellation as an ERROR with a traceback, in the log of
every such stop. These run a real uvicorn server in the test process and stop it that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import FastAPI

from runtime.protocol.gate import lifespan, outermost
from tests.support.server import free_port


def _forced_exit(app: FastAPI) -> None:
    """Serve ``app`` with uvicorn until it has started, then make it exit at once."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           log_config=None, lifespan="on"))

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        server.should_exit = server.force_exit = True
        await task

    asyncio.run(main())


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_forced_exit_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    outermost(app)
    with caplog.at_level(logging.INFO):
        _forced_exit(app)
    assert _errors(caplog) == []


def test_without_it_the_forced_exit_logs_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """What the test above guards against, shown on the same app without the gate's layer
    (if uvicorn or Starlette stop logging this, the layer can go)."""
    with caplog.at_level(logging.INFO):
        _forced_exit(FastAPI())
    assert any("CancelledError" in e for e in _errors(caplog)), caplog.text


def test_startup_and_shutdown_are_answered() -> None:
    inbox: asyncio.Queue[dict] = asyncio.Queue()
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> None:
        for kind in ("lifespan.startup", "lifespan.shutdown"):
            inbox.put_nowait({"type": kind})
        await asyncio.wait_for(lifespan(inbox.get, send), 5)  # type: ignore[arg-type]

    asyncio.run(main())
    assert sent == [{"type": "lifespan.startup.complete"},
                    {"type": "lifespan.shutdown.complete"}]


def test_an_app_with_lifespan_work_is_refused() -> None:
    """The layer answers the lifespan itself: an app whose start-up or shutdown does work
    would silently lose it, so it is refused."""
    @contextlib.asynccontextmanager
    async def work(_: FastAPI) -> AsyncIterator[None]:
        yield

    with pytest.raises(RuntimeError, match="lifespan handlers"):
        outermost(FastAPI(lifespan=work))
