"""What one request measured, as the client saw it.

Why a plain dataclass with absolute ``perf_counter`` times: every metric (TTFT, TPOT, ITL,
E2E, throughput, goodput) is derived from these records after the run, so the hot path only
stamps times, and the same math is unit-tested on synthetic records.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RequestRecord:
    """One request: identity, times (seconds, ``time.perf_counter``), tokens and outcome.

    ``chunk_times`` are the arrival times of the streamed pieces that carried output (the
    first one is the first token); for a non-streamed API it holds the single response time.
    ``output_tokens`` comes from the server's usage when it reports one
    (``token_source == "usage"``), else from the model's tokenizer (``"tokenizer"``).
    """

    target: str
    api: str
    point: str
    repeat: int
    index: int
    prompt_index: int
    scheduled: float = 0.0
    start: float = 0.0
    end: float = 0.0
    chunk_times: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    token_source: str = ""
    success: bool = False
    error: str = ""
    status: int = 0
    text: str = ""
    wall_start: float = 0.0
    model: str = ""  # the served name the request was sent to (``--models`` spreads them)

    def begin(self) -> None:
        """Stamp the start of the request (``perf_counter`` and wall clock), just before sending."""
        self.start = time.perf_counter()
        self.wall_start = time.time()

    def answered(self, text: str) -> None:
        """A non-streamed answer with ``text`` arrived at ``end``: its single chunk; an empty
        answer is a failure."""
        self.text = text
        if not text:
            self.error = "response without output text"
            return
        self.chunk_times = [self.end]
        self.success = True

    @property
    def ttft(self) -> float:
        """Time to first token (vLLM: first streamed chunk with content minus request start)."""
        return self.chunk_times[0] - self.start if self.chunk_times else 0.0

    @property
    def latency(self) -> float:
        """End-to-end latency: request start to the last output-carrying chunk (vLLM's E2EL)."""
        return self.end - self.start

    @property
    def itl(self) -> list[float]:
        """Inter-token latencies: gaps between consecutive output-carrying chunks."""
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:], strict=False)]

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (E2E - TTFT) / (tokens - 1); None with fewer
        than two tokens or a single response chunk (a non-streamed API has no TPOT)."""
        if self.output_tokens < 2 or len(self.chunk_times) < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)

    @property
    def dispatch_lag(self) -> float:
        """How late the client sent the request against its schedule (client self-check)."""
        return max(0.0, self.start - self.scheduled)

    def to_json(self, origin: float = 0.0) -> dict[str, Any]:
        """A JSON-able row for requests.jsonl, times relative to ``origin`` (the run start)."""
        row = asdict(self)
        for key in ("scheduled", "start", "end"):
            row[key] = round(row[key] - origin, 6)
        row["chunk_times"] = [round(t - origin, 6) for t in self.chunk_times]
        row["ttft"] = round(self.ttft, 6)
        row["latency"] = round(self.latency, 6)
        row["tpot"] = None if self.tpot is None else round(self.tpot, 6)
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> RequestRecord:
        """Inverse of :meth:`to_json` (derived fields dropped); used by ``compare``."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in row.items() if k in names})
