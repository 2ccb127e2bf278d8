"""The one request pipeline every protocol goes through.

Why one object: authentication, readiness, model resolution, limits, admission and the
counting of outcomes must mean the same on OpenAI, v2 REST, the generate extension, KServe v1
and gRPC. Every transport (the HTTP gate, gRPC ModelInfer, each ModelStreamInfer message) enters one
sequence, ``request``: it authenticates, checks readiness and the model, tracks the request in
flight and counts its outcome exactly once. Transports decode and encode; the protocol codecs
turn their wire format into vLLM's typed requests through the engine adapter and hand the
validated ``Work`` to ``admit``.

    route -> authenticate -> lifecycle -> parse and validate once (engine adapter)
          -> limits on validated values -> admission -> engine -> outcome -> metrics
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from runtime import limits
from runtime.adapters import AdapterSet
from runtime.admission import Admission
from runtime.auth import ApiKey
from runtime.errors import (
    EngineUnavailableError,
    ForbiddenError,
    ModelNotFoundError,
    ServingError,
    UnauthorizedError,
)
from runtime.lifecycle import Lifecycle, State
from runtime.limits import Limits, Work
from runtime.metrics import OTHER, count_request, current_model, current_protocol
from runtime.tracing import Tracing

logger = logging.getLogger(__name__)

# The request being served, for the steps that run inside it (admission).
current_call: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "current_call", default=None)

# The model label of requests that name no served model: one fixed value, so a client cannot
# create a metric series per random name.
OTHER_MODEL = OTHER

OPERATOR_OFF = ("operator actions (loading and unloading LoRA adapters, vLLM's operator "
                "routes) are off: this server has no operator key (start it with "
                "--operator_key_file, --operator_key or $OPERATOR_API_KEY, and "
                "--enable_adapter_loading true --allowed_adapter_dirs DIR to load adapters)")


def outcome_of(status: int) -> str:
    """Classify a final status into the ``outcome`` label."""
    if status < 400:
        return "success"
    if status in (429, 503):
        return "rejected"
    if status == 499:
        return "aborted"
    return "client_error" if status < 500 else "server_error"


@dataclass
class Call:
    """One request in flight: its protocol, model label and outcome, counted once at the end."""

    protocol: str
    model: str
    outcome: str | None = None  # set by the transport (status) or the route (mid-stream)
    details: dict[str, str] = field(default_factory=dict)
    _labels: Callable[[str | None], str] | None = None
    admitted: int = 0  # engine requests admitted for it (released when it ends)
    counted: bool = False

    def count(self) -> None:
        """Count the request's outcome, once. The HTTP gate counts just before the last byte
        of the answer is sent, so a client that reads the metrics after its answer finds
        its request counted; every other path is counted when its sequence ends."""
        if not self.counted:
            self.counted = True
            count_request(self.model, self.protocol, self.outcome or "server_error")

    def name(self, model: str | None) -> None:
        """The model the request turned out to name (OpenAI: in the body): its count and its
        token series go under that name (an alias, an adapter, or ``_other``)."""
        self.model = self._labels(model) if self._labels is not None else (model or self.model)
        current_model.set(self.model)

    def fail(self, exc: BaseException) -> None:
        """Record a failure after the response status was sent (a stream): the client saw a
        success status, so whatever broke is the server's (``server_error``) unless it was
        the client's own doing (a 4xx found late)."""
        status = int(getattr(exc, "http_status", 500))
        self.outcome = outcome_of(status) if 400 <= status < 500 else "server_error"


class Pipeline:
    """Shared by the HTTP gate, the gRPC interceptor and every protocol codec."""

    def __init__(self, *, lifecycle: Lifecycle, admission: Admission, api_key: ApiKey,
                 request_limits: Limits, served_names: list[str],
                 protect_metrics: bool = False, operator_routes: bool = False,
                 max_adapters: int = 0, vllm_serve: bool = False,
                 operator_key: ApiKey | None = None, tracing: Tracing | None = None) -> None:
        self.lifecycle = lifecycle
        self.admission = admission
        self.api_key = api_key
        self.operator_key = operator_key or ApiKey()  # none: operator actions are off
        self.limits = request_limits
        self.served_names = list(served_names)
        self.protect_metrics = protect_metrics
        self.operator_routes = operator_routes
        self.vllm_serve = vllm_serve  # `python -m runtime serve`: vLLM's paths where they differ
        # LoRA adapters served now (static and loaded at run time): models like the base one.
        self.adapters = AdapterSet(self.served_names, max_adapters)
        self.tracing = tracing  # vLLM's --otlp-traces-endpoint: a span per request (tracing.py)

    @property
    def default_model(self) -> str:
        return self.served_names[0]

    # ---- the steps ----

    def key_accepted(self, authorization: str | bytes | None, *, operator: bool = False
                     ) -> bool:
        """Whether ``authorization`` carries the key the action needs (``operator``: the
        operator key, which must be set): a transport's look before it parses a message
        (gRPC); the refusal, its status and its count are ``authenticate``'s and
        ``authorize_operator``'s."""
        if operator:
            return self.operator_key.enabled and self.operator_key.accepts(authorization)
        return self.api_key.accepts(authorization)

    def authenticate(self, authorization: str | bytes | None) -> None:
        """Raise ``UnauthorizedError`` unless the Bearer key (if one is set) was sent."""
        if not self.key_accepted(authorization):
            raise UnauthorizedError("missing or invalid API key")

    def authorize_operator(self, authorization: str | bytes | None) -> None:
        """Operator actions (repository load/unload, vLLM's operator routes) need the operator
        key, and only it: 401 (``UnauthorizedError``) for a missing or unknown key, 403
        (``ForbiddenError``) for the inference key, which authenticates a client, not an
        operator. Without an operator key the actions are off: 403 once the client key (if
        any) is checked. Keys rotated into the same value refuse operator actions (403)."""
        client_key = self.api_key.enabled and self.api_key.accepts(authorization)
        if not self.operator_key.enabled:
            self.authenticate(authorization)
            raise ForbiddenError(OPERATOR_OFF)
        if self.operator_key.accepts(authorization):
            if client_key:
                raise ForbiddenError("the operator key must differ from the inference key: "
                                     "operator actions are refused until they differ")
            return
        if client_key:
            raise ForbiddenError("this is an operator action: it needs the operator key, and "
                                 "the inference key is not one")
        raise UnauthorizedError("missing or invalid API key: this is an operator action and "
                                "needs the operator key")

    def check_ready(self) -> None:
        """Raise ``EngineUnavailableError`` (503 + Retry-After) unless the engine serves."""
        state = self.lifecycle.state
        if state is State.READY:
            return
        err = EngineUnavailableError(f"model is not ready ({self.lifecycle.reason})")
        err.retry_after = 5 if state in (State.LOADING, State.DRAINING) else 30
        raise err

    def resolve(self, name: str | None) -> str:
        """The served model ``name`` refers to; ``ModelNotFoundError`` for any other."""
        if name is None:
            return self.default_model
        if name not in self.served_names and name not in self.adapters:
            raise ModelNotFoundError(name)
        return name

    def label(self, name: str | None) -> str:
        """A bounded metric label for a model name."""
        if name is None:
            return self.default_model
        return name if name in self.served_names or name in self.adapters else OTHER_MODEL

    def admit(self, work: Work) -> None:
        """Limits on the validated request, then the overload bound; what it admits is
        released when the request's sequence ends."""
        limits.check(self.limits, work)
        self.admission.admit(work.engine_requests)
        call = current_call.get()
        if call is not None:
            call.admitted += work.engine_requests
        else:  # admitted outside a request's sequence: nothing would ever release it
            self.admission.release(work.engine_requests)

    @contextlib.contextmanager
    def request(self, protocol: str, model: str | None, *,
                authorization: str | bytes | None = None, authenticate: bool = True,
                checks: Callable[[], None] | None = None, route: str = "",
                carrier: Mapping[str, str] | None = None) -> Iterator[Call]:
        """The one sequence of an inference request, on every transport (the HTTP gate, gRPC
        ModelInfer, each ModelStreamInfer message): the key, then ``checks`` (the transport's
        own: the body size), readiness, the model, the in-flight count; the body of the
        ``with`` runs the request; its outcome is counted exactly once, whatever happens
        (refused, failed, cancelled: ``aborted``). Failures are raised to the transport, which
        renders and logs them (``runtime.errors.log_error``). With tracing on, the request is
        one server span (``route``: its name; ``carrier``: the caller's trace headers)."""
        tracing = self.tracing
        span = tracing.start(protocol, route, carrier) if tracing is not None else None
        record = Call(protocol, self.label(model), _labels=self.label)
        protocol_token = current_protocol.set(protocol)
        model_token = current_model.set(record.model)
        call_token = current_call.set(record)
        entered = False
        try:
            if authenticate:
                self.authenticate(authorization)
            if checks is not None:
                checks()
            self.check_ready()
            if model is not None:
                self.resolve(model)
            self.admission.enter()
            entered = True
            yield record
        except ServingError as exc:
            record.outcome = record.outcome or outcome_of(int(exc.http_status))
            raise
        except asyncio.CancelledError:
            record.outcome = record.outcome or "aborted"
            raise
        except Exception:
            record.outcome = record.outcome or "server_error"
            raise
        finally:
            if entered:
                self.admission.leave()
            self.admission.release(record.admitted)
            current_protocol.reset(protocol_token)
            current_model.reset(model_token)
            current_call.reset(call_token)
            record.count()
            if tracing is not None and span is not None:
                tracing.end(span, record.model, record.outcome or "server_error")
