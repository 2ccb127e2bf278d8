"""OpenAI API: vLLM's own OpenAI app, mounted at ``/openai`` (and ``/v1/...`` routes).

Why vLLM's app and not a re-implementation: its chat templates, logprobs, ``n``, stop strings,
streaming and error shapes are what OpenAI clients of vLLM already rely on (kserve 0.21's own
OpenAI layer no longer imports with vLLM 0.32; FACTS.md). This gateway adds what a mount lacks:
a 503 until the engine is ready, the runtime's limits and overload bound (checked on the body
before vLLM sees it), the ``openai`` protocol label for the metrics, and a count of every
request by outcome.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from runtime import limits
from runtime.admission import Admission
from runtime.errors import ClientError, ServingError
from runtime.lifecycle import Lifecycle
from runtime.limits import Limits
from runtime.metrics import count_request, current_protocol, outcome_for_status

# The OpenAI routes also answered without the /openai prefix (many clients assume /v1).
# /v1/models stays KServe's (its v1 protocol's model list).
UNPREFIXED_ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings")


async def _error(send: Send, status: int, message: str, kind: str,
                 headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": status}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})
    await send({"type": "http.response.body", "body": body})


class OpenAIGateway:
    """ASGI app in front of vLLM's OpenAI app, which exists only once the engine is built."""

    def __init__(self, engine: Any, lifecycle: Lifecycle, model_name: str,
                 admission: Admission, request_limits: Limits) -> None:
        self.engine = engine
        self.lifecycle = lifecycle
        self.model_name = model_name
        self.admission = admission
        self.limits = request_limits

    async def _check(self, body: bytes, path: str) -> None:
        """Malformed JSON, limits and overload, from the body, before vLLM sees it."""
        try:
            parsed = json.loads(body) if body else None
        except ValueError as exc:  # includes bodies that are not UTF-8
            raise ClientError(f"malformed JSON body: {exc}") from None
        limits.check_text(parsed)
        self.engine.validate_openai(path, parsed)
        params, prompts, n = limits.openai_work(parsed)
        limits.check(self.limits, params, prompts)
        self.admission.admit(prompts * n)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.engine.openai_app
        if scope["type"] != "http":
            if app is not None:
                await app(scope, receive, send)
            return
        if app is None or not self.lifecycle.ready:
            count_request(self.model_name, "openai", "rejected")
            await _error(send, 503, f"model is not ready ({self.lifecycle.reason})",
                         "ServiceUnavailableError", [(b"retry-after", b"5")])
            return
        if scope.get("method") == "GET":
            await app(scope, receive, send)
            return
        # Buffer the body (the gate's size limit bounds it), check it, then replay it.
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away before sending its body
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            await self._check(body, scope["path"])
        except ServingError as exc:
            outcome = "rejected" if exc.http_status in (429, 503) else "client_error"
            count_request(self.model_name, "openai", outcome)
            retry = getattr(exc, "retry_after", None)
            await _error(send, int(exc.http_status), exc.message,
                         "BadRequestError" if exc.http_status == 400 else type(exc).__name__,
                         [(b"retry-after", str(retry).encode())] if retry else [])
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 0

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        token = current_protocol.set("openai")
        try:
            await app(scope, replay, observed_send)
        finally:
            current_protocol.reset(token)
            count_request(self.model_name, "openai",
                          outcome_for_status(status) if status else "aborted")
