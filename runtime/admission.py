"""Admission: how much work is in flight, overload protection, and waiting out a drain.

Why in one place: the overload bound (``--max_waiting_requests``), the drain on SIGTERM (wait
until in-flight requests finish) and the in-flight gauge all need the same two counts: client
requests being served (any protocol) and engine requests submitted.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Gauge

from runtime.errors import OverloadedError

IN_FLIGHT = Gauge("kserve_llm_requests_in_flight", "Client requests being served (all protocols).",
                  ["model"])
ENGINE_IN_FLIGHT = Gauge("kserve_llm_engine_requests_in_flight",
                         "Engine requests submitted and not yet finished or aborted.", ["model"])
ADMITTED_WAITING = Gauge(
    "kserve_llm_requests_admitted_waiting",
    "Engine requests the runtime admitted that have not reached the engine yet (its own "
    "queue, before vLLM's vllm:num_requests_waiting).", ["model"])


class Admission:
    """Counts in-flight work; rejects new engine work past capacity + the waiting bound."""

    def __init__(self, model: str, capacity: int, max_waiting: int | None) -> None:
        self.model = model
        self.capacity = capacity  # engine requests that run at once (vLLM's max_num_seqs)
        self.max_waiting = max_waiting  # None: unbounded
        self.requests = 0
        self.engine_requests = 0
        # Engine requests admitted by client requests still in flight, started or not: a burst
        # admitted together counts before any of it reaches the engine.
        self.admitted = 0
        ADMITTED_WAITING.labels(model).set_function(
            lambda: max(0, self.admitted - self.engine_requests))
        self._idle = asyncio.Event()
        self._idle.set()

    # client requests (gate middleware and gRPC)
    def enter(self) -> None:
        self.requests += 1
        self._idle.clear()
        IN_FLIGHT.labels(self.model).set(self.requests)

    def leave(self) -> None:
        self.requests -= 1
        IN_FLIGHT.labels(self.model).set(self.requests)
        if self.requests <= 0:
            self._idle.set()

    # engine requests (instrumented engine client)
    def engine_started(self) -> None:
        self.engine_requests += 1
        ENGINE_IN_FLIGHT.labels(self.model).set(self.engine_requests)

    def engine_finished(self) -> None:
        self.engine_requests -= 1
        ENGINE_IN_FLIGHT.labels(self.model).set(self.engine_requests)

    @property
    def waiting(self) -> int:
        """Engine requests beyond what the engine runs at once: they wait in its queue (or
        are admitted and on their way to it)."""
        return max(0, max(self.engine_requests, self.admitted) - self.capacity)

    def admit(self, new_engine_requests: int = 1) -> None:
        """Raise ``OverloadedError`` when ``new_engine_requests`` more would wait past the
        bound; otherwise count them as admitted until :meth:`release` (the client request's
        end), whether or not they have reached the engine yet."""
        if self.max_waiting is not None:
            would_wait = max(0, max(self.engine_requests, self.admitted)
                             + new_engine_requests - self.capacity)
            if would_wait > self.max_waiting:
                raise OverloadedError(
                    f"server overloaded: {self.waiting} requests waiting (limit "
                    f"{self.max_waiting}); retry later")
        self.admitted += new_engine_requests

    def release(self, engine_requests: int) -> None:
        """A client request ended: the engine requests it was admitted for no longer count."""
        self.admitted = max(0, self.admitted - engine_requests)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no client request is in flight; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while self.requests > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._idle.wait(), remaining)
            except TimeoutError:
                return False
        return True
