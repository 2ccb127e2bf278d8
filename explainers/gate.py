"""Bounds on what reaches the explainer's routes: body size and requests at once.

Why an ASGI middleware: KServe's ``:explain`` and ``:predict`` handlers read the whole body
(``await request.body()``) before any check of ours, and nothing bounds how many explanations
run together, each up to ``--max_budget`` forward passes on the predictor. This layer runs
before KServe sees the request:

- ``--max_request_bytes``: a ``Content-Length`` over the cap gets 413 without a byte of the
  body read; a body without one (chunked) is read chunk by chunk and refused with 413 at the
  chunk that passes the cap, never reading further. What passes is replayed to the app.
- ``--max_concurrent_requests``: requests with a body (every method but GET, HEAD and OPTIONS)
  at once; one more gets 429 with ``Retry-After`` at once, before its body is read. An
  explanation takes seconds to minutes; holding a waiting request (and its body) inside the
  process would only move the queue here from the client or the ingress, which can retry.

Health routes (probes) and GETs pass untouched. Errors use the explainer's shape
(``{"error", "type"}``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
DEFAULT_MAX_CONCURRENT_REQUESTS = 4
RETRY_AFTER_SECONDS = 1
BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})


async def send_error(send: Send, status: int, kind: str, message: str,
                     headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """A JSON error in the explainer's shape, sent directly (no app involved)."""
    body = json.dumps({"error": message, "type": kind}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class RequestGate:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS) -> None:
        self.app = app
        self.max_bytes = max_request_bytes
        self.max_concurrent = max_concurrent_requests
        self.in_flight = 0

    def _too_large(self) -> str:
        return (f"the request body exceeds the limit of {self.max_bytes} bytes "
                f"(--max_request_bytes)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method", "GET") in BODYLESS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_concurrent:
            await send_error(
                send, 429, "TooManyRequests",
                f"the explainer is serving {self.in_flight} requests, its limit "
                f"(--max_concurrent_requests); retry after {RETRY_AFTER_SECONDS} s",
                [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())])
            return
        self.in_flight += 1
        try:
            length = _content_length(scope)
            if length is not None and length > self.max_bytes:
                await send_error(send, 413, "PayloadTooLarge", self._too_large())
                return
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":  # the client went away
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_bytes:
                    await send_error(send, 413, "PayloadTooLarge", self._too_large())
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks),
                            "more_body": False}
                return await receive()  # after the body: wait for the disconnect

            await self.app(scope, replay, send)
        finally:
            self.in_flight -= 1
