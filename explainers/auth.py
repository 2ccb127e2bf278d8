"""The explainer's own API key: a Bearer check in front of every route but health.

Why: the explainer calls the predictor with the predictor's key (``--predictor_api_key``), so
an explainer without a key of its own would hand anyone who reaches it the predictor's
compute, and each explanation costs hundreds of forward passes. ``--api_key``, ``$API_KEY`` or
``--api_key_file`` (a mounted Kubernetes Secret, re-read when it changes) sets the key; the
check is an ASGI middleware so it runs before KServe parses a body, and it answers in the
explainer's error shape (``{"error", "type"}``) with ``WWW-Authenticate: Bearer``. Probes need
no key: ``/``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}/ready`` and the
readiness route ``GET /v1/models/{name}`` pass through. The key is never logged or echoed.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Receive, Scope, Send

from explainers.errors import Unauthorized
from runtime.auth import ApiKey

# Health and readiness routes: reachable without the key (Kubernetes probes carry none).
HEALTH = re.compile(r"^/$|^/v2/health/(live|ready)$|^/v2/models/[^/]+/ready$"
                    r"|^/v1/models/[^/:]+$")
UNAUTHORIZED_MESSAGE = "missing or invalid API key: send 'Authorization: Bearer <key>'"


class BearerGate:
    """ASGI middleware: 401 for requests without the key on every route but health."""

    def __init__(self, app: ASGIApp, *, api_key: ApiKey) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not self.api_key.enabled
                or HEALTH.match(scope["path"])):
            await self.app(scope, receive, send)
            return
        authorization = next((value for name, value in scope.get("headers", ())
                              if name == b"authorization"), None)
        if self.api_key.accepts(authorization):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": UNAUTHORIZED_MESSAGE,
                           "type": Unauthorized.__name__}).encode()
        await send({"type": "http.response.start", "status": Unauthorized.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
