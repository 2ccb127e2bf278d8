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
