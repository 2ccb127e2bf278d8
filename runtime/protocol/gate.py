"""The HTTP front door: every request on the HTTP port passes here before any route.

Why one ASGI middleware: the pipeline's transport steps (route allowlist, request id, API key,
body size, readiness, model resolution, in-flight count, cancellation on disconnect, one count
of the outcome) apply to KServe's routes, the generate extension, KServe v1 and the OpenAI
routes alike, and must act before any of them parses a body. Health routes pass without a key
(probes must answer while draining); anything outside ``runtime.routes``' table is a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime import routes
from runtime.errors import (
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    ServingError,
    log_error,
)
from runtime.logs import new_request_id, request_id
from runtime.pipeline import Call, Pipeline, outcome_of
from runtime.protocol.http_errors import render
from runtime.routes import Kind

logger = logging.getLogger(__name__)


class RouteNotFoundError(NotFoundError):
    """A path outside the route table (404 / NOT_FOUND)."""


class _TooLarge(PayloadTooLargeError):
    """Raised from ``receive`` when a chunked body passes the limit; rendered as 413."""


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def _trace_headers(scope: Scope) -> dict[str, str]:
    """The caller's W3C trace context headers (``traceparent``, ``tracestate``)."""
    out = {}
    for name in (b"traceparent", b"tracestate"):
        value = _header(scope, name)
        if value is not None:
            out[name.decode()] = value.decode("latin-1")
    return out


class RequestIds:
    """The outermost ASGI layer: the request's id (the client's ``x-request-id`` or a new one)
    for everything that logs while it is served.

    Why not in the Gate alone: KServe adds its timing middleware (the ``kserve.trace`` lines)
    when its REST server starts, outside every middleware added before; a context variable set
    inside does not reach it, and its lines showed ``-``. :func:`outermost` puts this layer
    around the whole stack, whatever was added to it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        token = request_id.set(new_request_id(given.decode("latin-1") if given else None))
        try:
            await self.app(scope, receive, send)
        finally:
            request_id.reset(token)


async def lifespan(receive: Receive, send: Send) -> None:
    """The ASGI lifespan of an app with no start-up or shutdown work (KServe's: checked by
    :func:`outermost`), answered here rather than by Starlette's router.

    Why: when uvicorn is made to exit at once (a drain cut off at its timeout, a second
    signal) it skips the lifespan shutdown; the task waiting for it is cancelled as the event
    loop ends, and Starlette's router reports that cancellation to uvicorn, which logs it as an
    ERROR with a traceback on every such stop. Here the cancellation ends the task quietly:
    there is nothing to shut down."""
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def outermost(app: Any) -> None:
    """Wrap ``app``'s middleware stack, built on its first request, in :class:`RequestIds`
    (which also answers the lifespan: ``app`` must have no lifespan work of its own)."""
    router = app.router
    if type(router.lifespan_context).__name__ != "_DefaultLifespan" or getattr(
            router, "on_startup", None) or getattr(router, "on_shutdown", None):
        raise RuntimeError("the app has lifespan handlers: runtime.protocol.gate.lifespan "
                           "would skip them")
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: RequestIds(build())


class Gate:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, *, pipeline: Pipeline, max_request_bytes: int) -> None:
        self.app = app
        self.pipeline = pipeline
        self.max_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # websockets and anything else: not served
            if scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1008})
            return
        path = routes.unversioned(scope["path"])
        if path != scope["path"]:
            scope = {**scope, "path": path, "raw_path": path.encode()}
        route = routes.classify(path, operator_routes=self.pipeline.operator_routes,
                                vllm_serve=self.pipeline.vllm_serve)
        await self._handle(scope, receive, send, route)  # the id: set by RequestIds

    async def _send_error(self, send: Send, exc: ServingError, route: routes.Route,
                          where: str) -> None:
        log_error(exc, where)
        status, headers, body = render(exc, route.protocol)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
        await send({"type": "http.response.body", "body": body})

    def _size_check(self, scope: Scope) -> None:
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise PayloadTooLargeError(
                f"request body exceeds the limit of {self.max_bytes} bytes (--max_request_bytes)")

    def _admit_other(self, scope: Scope, route: routes.Route) -> None:
        """A route that is not inference: its key (health, and metrics unless protected, need
        none) and the body size."""
        if route.kind is Kind.UNKNOWN:
            raise RouteNotFoundError(f"no route {scope.get('method')} {scope['path']}"
                                     + (f": {route.reason}" if route.reason else ""))
        exempt = route.kind is Kind.HEALTH or (
            route.kind is Kind.METRICS and not self.pipeline.protect_metrics)
        if route.kind in (Kind.REPOSITORY, Kind.OPERATOR):  # the operator key, and only it
            self.pipeline.authorize_operator(_header(scope, b"authorization"))
        elif not exempt:
            self.pipeline.authenticate(_header(scope, b"authorization"))
        self._size_check(scope)

    async def _handle(self, scope: Scope, receive: Receive, send: Send,
                      route: routes.Route) -> None:
        rid = request_id.get().encode()
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        where = f"{scope.get('method')} {scope['path']}"
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(f"request body exceeds the limit of {self.max_bytes} "
                                    "bytes (--max_request_bytes)")
            return message

        try:
            if route.kind is not Kind.INFERENCE:
                self._admit_other(scope, route)
                await self.app(scope, limited_receive, send_with_id)
                return
            assert route.protocol is not None
            with self.pipeline.request(route.protocol, route.model,
                                       authorization=_header(scope, b"authorization"),
                                       checks=lambda: self._size_check(scope),
                                       route=route.endpoint or scope["path"],
                                       carrier=_trace_headers(scope)
                                       if self.pipeline.tracing is not None else None) as call:
                scope.setdefault("state", {})["call"] = call
                final = await _run_cancellable(self.app, scope, limited_receive, send_with_id,
                                               on_last_byte=_counter(call))
                call.outcome = call.outcome or ("aborted" if final is None
                                                else outcome_of(final))
        except asyncio.CancelledError:
            # The server is stopping and cuts this request off (a drain's timeout, a second
            # signal): uvicorn or the event loop's end cancels it, and its engine requests are
            # aborted with it (counted "aborted" by the pipeline). Not re-raised: uvicorn would
            # log the cancellation as an ASGI error with a traceback. Nothing else cancels a
            # request task (a client that goes away is a message, handled above).
            logger.warning("%s cut off: the server is stopping", where)
        except ServingError as exc:  # refused by the pipeline, or a chunked body too large
            if started:  # the status is sent: the failure can only be logged (and counted)
                log_error(exc, where)
            else:
                await self._send_error(send_with_id, exc, route, where)
        except Exception as exc:  # a server fault: a 500 in the route's shape, logged here once
            if started:
                raise
            err = ServerError(f"internal error: {type(exc).__name__}")
            err.__cause__ = exc  # log_error adds the traceback
            await self._send_error(send_with_id, err, route, where)


def _counter(call: Call) -> Callable[[int | None], None]:
    """Count ``call`` as its answer's last byte goes out (``None``: the client had already
    gone, so whatever the app answered, e.g. vLLM's 400 "Client disconnected", it is
    ``aborted``): a client that reads /metrics as soon as it has its answer finds it counted."""

    def count(status: int | None) -> None:
        call.outcome = call.outcome or ("aborted" if status is None else outcome_of(status))
        call.count()

    return count


async def _run_cancellable(app: ASGIApp, scope: Scope, receive: Receive, send: Send, *,
                           on_last_byte: Callable[[int | None], None] | None = None
                           ) -> int | None:
    """Run a request; cancel it (aborting its engine requests) if the client disconnects
    before the whole answer is sent. Returns the response status, None if cancelled.
    ``on_last_byte`` is called just before the answer's last body message is sent, with its
    status (None if the client had disconnected by then)."""
    body_done = asyncio.Event()
    disconnected = asyncio.Event()
    status: int | None = None
    complete = False

    async def tracking_receive() -> Message:
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            body_done.set()
        elif message["type"] == "http.disconnect" and not complete:
            disconnected.set()
        return message

    async def tracking_send(message: Message) -> None:
        nonlocal status, complete
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            complete = True
            if on_last_byte is not None:
                on_last_byte(None if disconnected.is_set() else status)
        await send(message)

    async def watch() -> None:
        await body_done.wait()
        while not complete:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not complete:
                    disconnected.set()
                return

    task = asyncio.ensure_future(app(scope, tracking_receive, tracking_send))
    watcher = asyncio.ensure_future(watch())
    gone = asyncio.ensure_future(disconnected.wait())
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        await task
        if disconnected.is_set() and not complete:
            return None  # the response stopped itself when the client went away
        return status if status is not None else 500
    finally:
        watcher.cancel()
        gone.cancel()
        task.cancel()  # a no-op once finished; if this wait was cancelled, the request goes too
