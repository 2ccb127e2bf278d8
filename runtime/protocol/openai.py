"""OpenAI API: vLLM's own OpenAI app, mounted at ``/openai`` (and ``/v1/...`` routes).

Why vLLM's app and not a re-implementation: its chat templates, logprobs, ``n``, stop strings,
streaming and error shapes are what OpenAI clients of vLLM already rely on (kserve 0.21's own
OpenAI layer no longer imports with vLLM 0.32; FACTS.md). This gateway adds what a mount lacks:
a 503 until the engine is ready, the ``openai`` protocol label for the metrics, and a count of
every request by outcome.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Receive, Scope, Send

from runtime.lifecycle import Lifecycle
from runtime.metrics import count_request, current_protocol, outcome_for_status

# The OpenAI routes also answered without the /openai prefix (many clients assume /v1).
# /v1/models stays KServe's (its v1 protocol's model list).
UNPREFIXED_ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings")


class OpenAIGateway:
    """ASGI app in front of vLLM's OpenAI app, which exists only once the engine is built."""

    def __init__(self, engine: Any, lifecycle: Lifecycle, model_name: str) -> None:
        self.engine = engine
        self.lifecycle = lifecycle
        self.model_name = model_name

    async def _unavailable(self, send: Send) -> None:
        body = json.dumps({"error": {
            "message": f"model is not ready ({self.lifecycle.reason})",
            "type": "ServiceUnavailableError", "param": None, "code": 503}}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", b"5")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.engine.openai_app
        if scope["type"] != "http":
            if app is not None:
                await app(scope, receive, send)
            return
        if app is None or not self.lifecycle.ready:
            await self._unavailable(send)
            count_request(self.model_name, "openai", "server_error")
            return
        status = 0

        async def observed_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        token = current_protocol.set("openai")
        try:
            await app(scope, receive, observed_send)
        finally:
            current_protocol.reset(token)
            if scope.get("method") != "GET":
                count_request(self.model_name, "openai",
                              outcome_for_status(status) if status else "aborted")
