"""The predictor's lifecycle as one explicit state, read by every health route.

Why: KServe's own DataPlane answers "ready" whatever the engine's state (docs/platform-notes.md), and
huggingfaceserver stays green after its engine dies (kserve#6259). Here readiness and liveness
are functions of one state machine: LOADING -> READY -> DRAINING -> STOPPED, or DEAD from any
state when the engine fails.
"""

from __future__ import annotations

import enum
import logging
import time

logger = logging.getLogger(__name__)


class State(enum.Enum):
    """Where the predictor is in its life."""

    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    DEAD = "dead"


class Lifecycle:
    """Holds the current state and answers the health questions from it."""

    def __init__(self) -> None:
        self._state = State.LOADING
        self._since = time.monotonic()
        self.reason = "engine loading"

    @property
    def state(self) -> State:
        return self._state

    def set(self, state: State, reason: str = "") -> None:
        """Move to ``state``. DEAD is final: nothing moves out of it."""
        if self._state is State.DEAD or state is self._state:
            return
        logger.info("lifecycle: %s -> %s %s", self._state.value, state.value, reason)
        self._state = state
        self._since = time.monotonic()
        self.reason = reason or state.value

    @property
    def ready(self) -> bool:
        """Accepts new requests: the engine is up and answering."""
        return self._state is State.READY

    @property
    def live(self) -> bool:
        """The process is worth keeping: false once the engine is dead, so Kubernetes restarts it."""
        return self._state not in (State.DEAD, State.STOPPED)
