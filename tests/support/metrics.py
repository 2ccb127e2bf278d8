"""Reading the runtime's Prometheus text in real-server tests.

Why one helper: prometheus_client also emits ``_created`` samples, so a sum over a series
must match ``series{`` exactly; several tests sum counters and gauges that way.
"""

from __future__ import annotations


def metric_sum(text: str, series: str, needle: str = "") -> float:
    """The sum of the ``series{...}`` samples in ``text`` whose line contains ``needle``."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(series + "{") and needle in line)
