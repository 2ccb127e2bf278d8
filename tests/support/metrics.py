"""Reading the runtime's Prometheus text in real-server tests.

Why one helper: prometheus_client also emits ``_created`` samples, so a sum over a series
must match ``series{`` exactly; several tests sum counters and gauges that way. The benchmark
tests check a report against what the server itself counted (``counters``, ``increase``).
"""

from __future__ import annotations

import re
from collections import defaultdict

import httpx


def metric_sum(text: str, series: str, needle: str = "") -> float:
    """The sum of the ``series{...}`` samples in ``text`` whose line contains ``needle``."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(series + "{") and needle in line)


def labelled_sum(text: str, series: str, **labels: str) -> float:
    """The sum of the ``series{...}`` samples in ``text`` that carry every label given, in
    whatever order the exposition prints them."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(series + "{"):
            have = dict(_LABEL.findall(line[len(series) + 1:line.rindex("}")]))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


_SAMPLE = re.compile(r"^(kserve_llm_\w+)_total\{(.*)\} ([0-9.e+-]+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def counters(url: str) -> dict[tuple[str, str, str], float]:
    """``{(series, model, protocol): value}`` of the runtime's ``kserve_llm_*_total`` counters
    (``kserve_llm_requests``, ``kserve_llm_generation_tokens``, ...), summed over the other
    labels (a request's outcome)."""
    out: dict[tuple[str, str, str], float] = defaultdict(float)
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if m := _SAMPLE.match(line):
            labels = dict(_LABEL.findall(m.group(2)))
            out[(m.group(1), labels.get("model", ""), labels.get("protocol", ""))] += \
                float(m.group(3))
    return out


def increase(before: dict[tuple[str, str, str], float],
             after: dict[tuple[str, str, str], float]) -> dict[tuple[str, str, str], float]:
    """How much each counter rose between two readings (0 for one that did not move)."""
    return defaultdict(float, {k: v - before.get(k, 0.0) for k, v in after.items()})
