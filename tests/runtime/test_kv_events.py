"""Real process: vLLM's KV-cache events (``--kv-events-config``, a ZMQ publisher) work through
the runtime as in ``vllm serve``: a router subscribed to the publisher, decoding the wire as
llm-d's indexer does (tests/support/kv_events.py), sees the blocks of a prompt the runtime
was sent, with their token ids. The predictor is started with the publisher on
(tests/conftest.py); serve mode has the same test in ``test_vllm_serve.py``.
"""

from __future__ import annotations

import httpx
import pytest

from tests.runtime.conftest import MODEL
from tests.support import kv_events
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


def test_a_prompt_sent_is_published_as_block_stored(predictor: ServerProcess,
                                                    http: httpx.Client) -> None:
    with kv_events.Subscriber(predictor.kv_events_port) as subscriber:  # type: ignore[attr-defined]
        kv_events.assert_prompt_published(subscriber, http, MODEL)

