"""Errors the explainer raises, each carrying the HTTP status it answers with.

Why: the issue asks for a clear 4xx for bad input and 502/504 (with the reason) when the
predictor is unreachable or slow. One hierarchy lets methods and the predictor client raise
without knowing about HTTP, and one exception handler (in ``explainers.server``) renders all of
them as ``{"error": ..., "type": ...}`` the way KServe renders its own errors.
"""

from __future__ import annotations


class ExplainerError(Exception):
    """Base class: an error with an HTTP status and a message meant for the client."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClientError(ExplainerError):
    """The request is wrong (unknown method or granularity, empty prompt, budget exceeded)."""

    status = 400


class Unauthorized(ExplainerError):
    """The request lacks the explainer's API key (``--api_key``), or carries a wrong one."""

    status = 401


class PredictorError(ExplainerError):
    """The predictor answered with an error or an answer the explainer cannot use."""

    status = 502


class PredictorUnreachable(PredictorError):
    """No connection to the predictor could be made."""

    status = 502


class PredictorTimeout(PredictorError):
    """The predictor did not answer within the configured timeout."""

    status = 504
