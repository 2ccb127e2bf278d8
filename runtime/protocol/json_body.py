"""Reading a JSON request body, the same way on every JSON route.

Why one function: malformed JSON, bodies that are not UTF-8 and strings that are not valid
Unicode (unpaired surrogates) must be the same 400 on OpenAI, generate and KServe v1.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from runtime.errors import ClientError
from runtime.limits import check_text


async def read_json(request: Request) -> Any:
    """The request body as JSON; ``ClientError`` if it is not."""
    try:
        body = json.loads(await request.body())
    except ValueError as exc:  # includes bodies that are not UTF-8
        raise ClientError(f"malformed JSON body: {exc}") from None
    check_text(body)
    return body
