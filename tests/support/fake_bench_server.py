"""In-process stand-in servers for the benchmark client's fast tests (aiohttp).

Why: the client's bookkeeping (which request went where, when it arrived, how chunks are
timed) is checked against a server whose answers are scripted, without an engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from deployment.processes import free_port


def echo_app(seen: list[str]) -> web.Application:
    """Every API answers one chunk whose text is the model name the request was sent to."""
    async def sse(request: web.Request, event: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n".encode())
        return resp

    async def chat(request: web.Request) -> web.StreamResponse:
        model = (await request.json())["model"]
        seen.append(model)
        return await sse(request, {"choices": [{"delta": {"content": model}}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        model = (await request.json())["model"]
        seen.append(model)
        return await sse(request, {"choices": [{"text": model}]})

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        seen.append(request.match_info["model"])
        return await sse(request, {"text_output": request.match_info["model"]})

    async def generate(request: web.Request) -> web.Response:
        seen.append(request.match_info["model"])
        return web.json_response({"text_output": request.match_info["model"]})

    async def infer(request: web.Request) -> web.Response:
        seen.append(request.match_info["model"])
        return web.json_response({"outputs": [{"name": "text_output", "datatype": "BYTES",
                                               "shape": [1],
                                               "data": [request.match_info["model"]]}]})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v2/models/{model}/generate_stream", generate_stream)
    app.router.add_post("/v2/models/{model}/generate", generate)
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    return app


@contextlib.contextmanager
def serve_in_thread(app: web.Application) -> Iterator[str]:
    """Serve ``app`` on a free loopback port from a thread of its own; yields its URL."""
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
