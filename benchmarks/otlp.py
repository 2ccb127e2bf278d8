"""A real OTLP/gRPC trace receiver in this process (opentelemetry-proto's TraceService).

Why: the runtime and vLLM export with the OTLP exporter over gRPC; a receiver speaking the
protocol sees what a collector would get, with nothing mocked on the sending side. The tests
keep every span to check trees and attributes; the benchmark (``frontend-cpu --traced``) only
needs to know that spans arrived, so with ``keep=False`` it counts them per (service, name)
and keeps nothing else.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class Span:
    """One received span, ids as hex."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    service: str
    attributes: dict[str, Any]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _service(resource: Any) -> str:
    for a in resource.attributes:
        if a.key == "service.name":
            return str(_value(a.value))
    return ""


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Collects every exported span (``keep=False``: counts only); ``endpoint`` is
    ``grpc://127.0.0.1:PORT``."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.spans: list[Span] = []
        self.counts: Counter[tuple[str, str]] = Counter()  # (service, span name) -> spans
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"grpc://127.0.0.1:{self.port}"

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (the service's name)
        got: list[Span] = []
        counted: Counter[tuple[str, str]] = Counter()
        for resource_spans in request.resource_spans:
            service = _service(resource_spans.resource)
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    counted[(service, s.name)] += 1
                    if self.keep:
                        got.append(Span(s.name, s.trace_id.hex(), s.span_id.hex(),
                                        s.parent_span_id.hex(), service,
                                        {a.key: _value(a.value) for a in s.attributes}))
        with self._lock:
            self.spans += got
            self.counts.update(counted)
        return trace_service_pb2.ExportTraceServiceResponse()

    def start(self) -> Receiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(None)

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> dict[tuple[str, str], int]:
        """Spans received so far per (service, span name)."""
        with self._lock:
            return dict(self.counts)

    def count(self, *, service: str | None = None, name: str | None = None) -> int:
        """Spans received so far, of ``service`` and/or named ``name`` (all without either)."""
        with self._lock:
            return sum(n for (s, nm), n in self.counts.items()
                       if (service is None or s == service) and (name is None or nm == name))

    def in_trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, trace_id: str, names: set[str], timeout: float = 20.0) -> list[Span]:
        """The spans of ``trace_id`` once every name in ``names`` is among them (or the time
        is up: the caller's assertion then says what is missing)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.in_trace(trace_id)
            if names <= {s.name for s in spans} or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)
