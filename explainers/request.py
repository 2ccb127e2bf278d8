"""Parsing and validating an explain request body (no I/O, no model).

Why: all client errors that can be found from the body alone are found here, before any
predictor call, so a bad request costs nothing and gets a precise 400.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from explainers.errors import ClientError

GRANULARITIES = ("token", "word", "sentence", "message")
DEFAULT_METHOD = "leave_one_out"
DEFAULT_GRANULARITY = "sentence"


@dataclass
class ExplainRequest:
    """One explanation to compute: what was asked, the answer to explain, and how."""

    prompt: str | None
    messages: list[dict[str, str]] | None
    response: str | None
    method: str = DEFAULT_METHOD
    granularity: str = DEFAULT_GRANULARITY
    params: dict[str, Any] = field(default_factory=dict)
    html: bool = True


def split_instances(body: Any) -> list[Any]:
    """The request objects in a body: the body itself, or each of KServe's ``instances``."""
    if not isinstance(body, dict):
        raise ClientError("the request body must be a JSON object")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ClientError("'instances' must be a non-empty list of explain requests")
        return instances
    return [body]


def parse_request(obj: Any) -> ExplainRequest:
    """Validate one request object and turn it into an ``ExplainRequest``."""
    if not isinstance(obj, dict):
        raise ClientError("each explain request must be a JSON object")
    unknown = set(obj) - {"prompt", "messages", "response", "method", "granularity", "params",
                          "html"}
    if unknown:
        raise ClientError(f"unknown request field(s): {', '.join(sorted(unknown))}")
    prompt, messages = obj.get("prompt"), obj.get("messages")
    if prompt is not None and messages is not None:
        raise ClientError("give either 'prompt' or 'messages', not both")
    if prompt is None and messages is None:
        raise ClientError("the request needs a 'prompt' (string) or chat 'messages'")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ClientError("'prompt' must be a string")
        if not prompt.strip():
            raise ClientError("the prompt is empty")
    if messages is not None:
        messages = _parse_messages(messages)
    response = obj.get("response")
    if response is not None and (not isinstance(response, str) or not response.strip()):
        raise ClientError("'response' must be a non-empty string (or absent to generate one)")
    method = obj.get("method", DEFAULT_METHOD)
    if not isinstance(method, str):
        raise ClientError("'method' must be a string")
    granularity = obj.get("granularity", DEFAULT_GRANULARITY)
    if granularity not in GRANULARITIES:
        raise ClientError(
            f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}"
        )
    params = obj.get("params")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ClientError("'params' must be an object")
    html = obj.get("html", True)
    if not isinstance(html, bool):
        raise ClientError("'html' must be true or false")
    return ExplainRequest(prompt=prompt, messages=messages, response=response, method=method,
                          granularity=granularity, params=params, html=html)


def _parse_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ClientError("'messages' must be a non-empty list of {role, content} objects")
    parsed = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            raise ClientError(f"messages[{i}] must be an object with string 'role' and 'content'")
        parsed.append({"role": m["role"], "content": m["content"]})
    if not any(m["content"].strip() for m in parsed):
        raise ClientError("the prompt is empty: every message's content is blank")
    return parsed


def int_param(params: dict[str, Any], name: str, default: int, *, minimum: int = 1,
              maximum: int | None = None) -> int:
    """An integer method setting from ``params``, with a 400 when it is out of range."""
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClientError(f"params.{name} must be an integer")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ClientError(f"params.{name} must be at least {minimum}{upper}; got {value}")
    return value
