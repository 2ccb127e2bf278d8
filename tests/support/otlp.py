"""The OTLP/gRPC trace receiver of the tests: ``benchmarks.otlp``'s, re-exported.

Why here too: the tests import it as ``tests.support.otlp.Receiver``; the class lives in
``benchmarks`` because ``frontend-cpu --traced`` runs it too and benchmarks never import tests.
"""

from __future__ import annotations

from benchmarks.otlp import Receiver, Span

__all__ = ["Receiver", "Span"]
