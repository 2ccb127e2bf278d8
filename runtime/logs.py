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

FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


def new_request_id(given: str | None) -> str:
    """The client's id if it sent a sane one, else a fresh one."""
    if given and len(given) <= 128 and given.isprintable():
        return given
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record so the format can show it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure(level: int = logging.INFO) -> None:
    """Root logging with the request id in every line (handlers added later get the filter
    through the root logger's handler)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
