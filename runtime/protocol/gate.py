"""The HTTP gate in front of every route: request id, API key, lifecycle, in-flight count,
and cancellation of non-streamed requests whose client went away.

Why one ASGI middleware: these concerns apply to KServe's routes, the generate extension and
vLLM's mounted OpenAI app alike, and must act before any of them parses a body. Health and
metrics routes pass through untouched (probes need no key and must answer while draining).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.admission import Admission
from runtime.lifecycle import Lifecycle, State
from runtime.logs import new_request_id, request_id
from runtime.metrics import count_request

HEALTH = re.compile(r"^/$|^/v2/health/(live|ready)$|^/v2/models/[^/]+(/versions/[^/]+)?/ready$"
                    r"|^/v1/models/[^/:]+$")
INFERENCE = re.compile(r"^/openai/|^/v1/(completions|chat/completions|embeddings)$"
                       r"|^/v2/models/[^/]+(/versions/[^/]+)?/(infer|generate|generate_stream)$"
                       r"|^/v1/models/[^/]+:predict$")
# Routes answered with one JSON body after the engine finishes: cancel them on disconnect.
# (Streams are cancelled by Starlette itself; vLLM's OpenAI routes watch for it themselves.)
NON_STREAMED = re.compile(r"/(infer|generate)$|:predict$")
# The v2 spec's versioned paths: this runtime has one, unnamed version of its model, so
# `/v2/models/m/versions/v/...` is served as `/v2/models/m/...` (KServe would answer 501).
VERSIONED = re.compile(r"^(/v2/models/[^/]+)/versions/[^/]+(/.*)?$")


def _protocol(path: str) -> str:
    if path.startswith(("/openai/", "/v1/")):
        return "openai"
    return "v2-generate" if "/generate" in path else "v2-rest"


class Gate:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, *, lifecycle: Lifecycle, admission: Admission,
                 api_key: str | None, protect_metrics: bool, model_name: str) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.admission = admission
        self.api_key = api_key.encode() if api_key else None
        self.protect_metrics = protect_metrics
        self.model_name = model_name

    async def _reject(self, send: Send, path: str, status: int, message: str,
                      headers: list[tuple[bytes, bytes]] = ()) -> None:
        if path.startswith(("/openai/", "/v1/")) and INFERENCE.match(path):
            payload: Any = {"error": {"message": message, "type": "error", "param": None,
                                      "code": status}}
        else:
            payload = {"error": message}
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"x-request-id", request_id.get().encode()), *headers]})
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, scope: Scope) -> bool:
        assert self.api_key is not None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(),
                                                                           self.api_key)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        versioned = VERSIONED.match(path)
        if versioned:
            path = versioned.group(1) + (versioned.group(2) or "")
            scope = {**scope, "path": path, "raw_path": path.encode()}
        headers = dict(scope.get("headers", ()))
        token = request_id.set(new_request_id(headers.get(b"x-request-id", b"").decode(
            "latin-1")))
        try:
            await self._handle(scope, receive, send, path)
        finally:
            request_id.reset(token)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        rid = request_id.get().encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        exempt = HEALTH.match(path) or (path == "/metrics" and not self.protect_metrics)
        if exempt:
            await self.app(scope, receive, send_with_id)
            return
        if self.api_key is not None and not self._authorized(scope):
            await self._reject(send, path, 401, "missing or invalid API key",
                               [(b"www-authenticate", b"Bearer")])
            return
        if not INFERENCE.match(path):
            await self.app(scope, receive, send_with_id)
            return
        state = self.lifecycle.state
        if state is not State.READY:
            retry = b"5" if state in (State.LOADING, State.DRAINING) else b"30"
            count_request(self.model_name, _protocol(path), "rejected")
            await self._reject(send, path, 503,
                               f"model is not ready ({self.lifecycle.reason})",
                               [(b"retry-after", retry)])
            return
        self.admission.enter()
        try:
            if NON_STREAMED.search(path):
                await _cancel_on_disconnect(self.app, scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            self.admission.leave()


async def _cancel_on_disconnect(app: ASGIApp, scope: Scope, receive: Receive,
                                send: Send) -> None:
    """Run a non-streamed request; cancel it (aborting its engine requests) if the client
    disconnects before the answer is sent."""
    body_done = asyncio.Event()
    disconnected = asyncio.Event()

    async def tracking_receive() -> Message:
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            body_done.set()
        elif message["type"] == "http.disconnect":
            disconnected.set()
        return message

    async def watch() -> None:
        await body_done.wait()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
                return

    task = asyncio.ensure_future(app(scope, tracking_receive, send))
    watcher = asyncio.ensure_future(watch())
    gone = asyncio.ensure_future(disconnected.wait())
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            count_request(str(scope.get("model", "")) or "-", _protocol(scope["path"]),
                          "aborted")
            return
        await task
    finally:
        watcher.cancel()
        gone.cancel()
