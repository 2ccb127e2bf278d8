"""Unit tier: the runtime's log format (runtime.logs): one line per message, whatever a
client put in it."""

from __future__ import annotations

import logging
import sys

from runtime.logs import FORMAT, OneLineFormatter, RequestIdFilter


def _format(msg: str, *args: object, exc: bool = False) -> str:
    record = logging.LogRecord("runtime.test", logging.WARNING, __file__, 1, msg, args,
                               sys.exc_info() if exc else None)
    RequestIdFilter().filter(record)
    return OneLineFormatter(FORMAT).format(record)


def test_a_client_value_cannot_start_a_log_line() -> None:
    """A decoded path with ``%0a`` (or ``%0d``, or any control character) stays on its line."""
    path = "/v2/models/x\n2026-12-04 00:00:00,000 ERROR [-] runtime: FORGED\r\x1b[2J/generate"
    line = _format("POST %s: model not found", path)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "x\\n2026-12-04" in line and "\\r\\x1b[2J" in line


def test_a_traceback_keeps_its_lines() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        text = _format("internal error", exc=True)
    first, *rest = text.splitlines()
    assert first.endswith("internal error") and rest[0].startswith("Traceback")
