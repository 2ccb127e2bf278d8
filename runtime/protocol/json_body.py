"""Reading a JSON request body, the same way on every JSON route.

Why one function: malformed JSON, bodies that are not UTF-8, JSON nested too deeply and
strings that are not valid Unicode (unpaired surrogates) must be the same 400 on OpenAI,
generate, KServe v1 and the repository extension (``runtime.limits.load_json``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from runtime.limits import load_json


async def read_json(request: Request) -> Any:
    """The request body as JSON; ``ClientError`` if it is not."""
    return load_json(await request.body(), "request body")


async def read_form(request: Request) -> Any:
    """A multipart form body (the audio APIs' upload) as a dict of its fields; None when the
    body is not a form, which the endpoint then refuses with its own message."""
    try:
        form = await request.form()
    except Exception:  # malformed multipart, or a body that is no form at all
        return None
    return {key: value for key, value in form.multi_items()} or None
