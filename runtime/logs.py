"""Request ids on every log line of the runtime, and on every response.

Why: a 5xx is "logged with the request id" (docs/design.md) and a user reporting a failure quotes
the ``x-request-id`` the response carried. The id comes from the client's ``x-request-id``
header when it sends one, else it is generated; it travels in a context variable.
"""

from __future__ import annotations

import contextvars
import logging
import uuid

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The trace id of the request's span when tracing is on (runtime.tracing): shown next to the id.
trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)

FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


def new_request_id(given: str | None) -> str:
    """The client's id if it sent a sane one, else a fresh one."""
    if given and len(given) <= 128 and given.isprintable():
        return given
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record so the format can show it; with tracing on, the
    request's trace id follows it (``[ID trace_id=HEX]``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        trace = trace_id.get()
        record.request_id = request_id.get() if trace is None else \
            f"{request_id.get()} trace_id={trace}"
        return True


# KServe's REST handlers log these with a traceback at ERROR; they are a client's mistake or the
# server's announced state (404 for an unknown model, 503 while loading), not failures.
_KSERVE_EXPECTED = frozenset({"ModelNotFound", "ModelNotReady", "ServerNotReady", "ServerNotLive",
                              "InvalidInput"})


class ExpectedErrorFilter(logging.Filter):
    """Turns KServe's traceback for an expected error (``_KSERVE_EXPECTED``) into one INFO line.

    Why a log filter: KServe registers its exception handlers when its server starts, after
    the runtime's, so they cannot be replaced; their log records can be.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        kind = type(exc)
        if exc is not None and kind.__module__ == "kserve.errors" \
                and kind.__name__ in _KSERVE_EXPECTED:
            record.msg, record.args = "%s: %s", (kind.__name__, exc)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f)} | {
    ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


class OneLineFormatter(logging.Formatter):
    """Escapes control characters in a record's message, so that a client's value in it (a
    decoded path with ``%0a``, a model name, an error text) cannot start a forged log line.
    A traceback, appended after the message, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = record.message.translate(_CONTROL)
        return super().formatMessage(record)


def configure(level: int = logging.INFO) -> None:
    """Root logging with the request id in every line (handlers added later get the filter
    through the root logger's handler)."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    handler.addFilter(RequestIdFilter())
    handler.addFilter(ExpectedErrorFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
