"""OpenTelemetry traces: one server span of the runtime per inference request.

Why: an operator follows one slow request through gateway, runtime and engine. vLLM traces
the engine's part (its ``llm_request`` span, created when ``--otlp-traces-endpoint`` is set and
the request carries trace headers); the runtime's own part (key, queueing, protocol
translation, the response) was in no trace. With vLLM's flag set, every request that enters
``Pipeline.request`` (every protocol and transport) gets one span here, continuing the
caller's W3C ``traceparent`` (HTTP header or gRPC metadata), and the runtime hands *its* span
to vLLM as the request's trace headers (``runtime.engine.vllm_client``), so vLLM's
``llm_request`` span is its child: one request, one tree.

Off by default: without an endpoint nothing here is built, ``opentelemetry`` is not imported,
and the pipeline's cost is one ``is None`` test. The exporter is vLLM's: OTLP over gRPC, or
over HTTP with ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf``; the tracer provider is the
runtime's own (vLLM installs the global one for its spans in this process).
"""

from __future__ import annotations

import atexit
import contextvars
import os
import time
from collections.abc import Mapping
from typing import Any

from runtime import logs

SERVICE_NAME = "kserve-llm-runtime"
TRACE_HEADERS = ("traceparent", "tracestate")

# The runtime's span of the request being served (None with tracing off or outside a request).
current: contextvars.ContextVar[RequestSpan | None] = contextvars.ContextVar(
    "tracing_current", default=None)


class RequestSpan:
    """The runtime's span of one inference request, while it is served."""

    def __init__(self, span: Any, started: float) -> None:
        self.span = span
        self.started = started
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.engine_requests = 0
        self._resets: tuple[Any, ...] = ()  # context tokens, undone when the span ends
        ctx = span.get_span_context()
        self.trace_id = f"{ctx.trace_id:032x}"
        self.traceparent = f"00-{self.trace_id}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
        self.tracestate = ctx.trace_state.to_header() if ctx.trace_state else ""

    def engine_request(self) -> dict[str, str]:
        """An engine request starts: vLLM's trace headers (this span as its parent); the
        first one's delay is the request's time before the engine."""
        if self.engine_requests == 0:
            self.span.set_attribute("kserve.time_to_engine_s",
                                    time.perf_counter() - self.started)
        self.engine_requests += 1
        headers = {"traceparent": self.traceparent}
        if self.tracestate:
            headers["tracestate"] = self.tracestate
        return headers

    def engine_finished(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens


class Tracing:
    """The runtime's tracer (its own provider, exporting where vLLM's does)."""

    def __init__(self, exporter: Any, *, service_name: str | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        attributes = {"process.pid": os.getpid()}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = service_name or SERVICE_NAME  # type: ignore[assignment]
        self.provider = TracerProvider(resource=Resource.create(attributes))
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("runtime.pipeline")
        self._propagator = TraceContextTextMapPropagator()
        self._trace = trace
        self._shut = False

    def start(self, protocol: str, route: str, carrier: Mapping[str, str] | None) -> RequestSpan:
        """Start the request's server span (child of the caller's ``traceparent``, if any) and
        make it current (logs, the engine's trace headers, OpenTelemetry's context)."""
        from opentelemetry import context as otel_context

        parent = None
        if carrier:
            parent = self._propagator.extract({k: carrier[k] for k in TRACE_HEADERS
                                               if k in carrier})
        span = self.tracer.start_span(
            f"{protocol} {route}" if route else protocol, context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes={"kserve.protocol": protocol, "kserve.route": route,
                        "kserve.request_id": logs.request_id.get()})
        handle = RequestSpan(span, time.perf_counter())
        logs.trace_id.set(handle.trace_id)
        handle._resets = (current.set(handle),
                          otel_context.attach(self._trace.set_span_in_context(span)))
        return handle

    def end(self, handle: RequestSpan, model: str, outcome: str) -> None:
        """End the span with what the request turned out to be."""
        from opentelemetry import context as otel_context
        from opentelemetry.trace import Status, StatusCode

        span = handle.span
        span.set_attribute("gen_ai.request.model", model)
        span.set_attribute("kserve.outcome", outcome)
        if handle.engine_requests:
            span.set_attribute("kserve.engine_requests", handle.engine_requests)
            span.set_attribute("gen_ai.usage.prompt_tokens", handle.prompt_tokens)
            span.set_attribute("gen_ai.usage.completion_tokens", handle.completion_tokens)
        if outcome == "server_error":
            span.set_status(Status(StatusCode.ERROR, outcome))
        span.end()
        # The log lines' trace id stays set: the transport logs the request's error after its
        # sequence ended (each request runs in its own task, so it goes no further).
        token_current, token_otel = handle._resets
        otel_context.detach(token_otel)
        current.reset(token_current)

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        return bool(self.provider.force_flush(timeout_millis))

    def shutdown(self) -> None:
        if not self._shut:
            self._shut = True
            self.provider.shutdown()


def span_exporter(endpoint: str) -> Any:
    """The exporter vLLM builds for ``--otlp-traces-endpoint`` (``vllm.tracing.otel``): OTLP
    over gRPC (insecure) unless ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` is ``http/protobuf``."""
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HTTPExporter,
        )

        return HTTPExporter(endpoint=endpoint)
    raise ValueError(f"unsupported OTLP protocol {protocol!r} in "
                     "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL (grpc or http/protobuf)")


def start(endpoint: str | None) -> Tracing | None:
    """The runtime's tracing for vLLM's ``--otlp-traces-endpoint``; None (nothing built,
    nothing imported) without one. Spans still buffered are exported at exit."""
    if not endpoint:
        return None
    tracing = Tracing(span_exporter(endpoint))
    atexit.register(tracing.shutdown)
    return tracing

