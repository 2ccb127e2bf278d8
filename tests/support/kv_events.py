"""A KV-event subscriber as a router runs one: a ZMQ SUB socket on vLLM's publisher.

Why here, with pyzmq and msgspec and not vLLM's classes: llm-d's indexer and other routers
are separate programs (in Go, Rust) that read the wire format, ``(topic, sequence, payload)``
frames whose payload is a msgpack ``[ts, events, dp_rank]`` with each event a map tagged by
``type`` (``BlockStored``, ``BlockRemoved``, ``AllBlocksCleared``). Decoding the wire as
they do checks what they would get.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq

TOPIC = "kv-events"


def engine_flag(port: int, topic: str = TOPIC) -> str:
    """vLLM's ``--kv-events-config``: a ZMQ publisher bound on ``port`` (all interfaces, as a
    pod binds it for a router to connect to)."""
    return "--kv-events-config=" + json.dumps({
        "enable_kv_cache_events": True, "publisher": "zmq",
        "endpoint": f"tcp://*:{port}", "topic": topic})


@dataclass(frozen=True)
class Batch:
    """One published batch: its sequence number and its events (maps, as decoded)."""

    sequence: int
    events: list[dict[str, Any]]


class Subscriber:
    """A SUB socket connected to ``tcp://127.0.0.1:PORT``, subscribed to ``topic``."""

    def __init__(self, port: int, topic: str = TOPIC) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt_string(zmq.SUBSCRIBE, topic)
        self._socket.connect(f"tcp://127.0.0.1:{port}")
        self.topic = topic

    def batches(self, timeout: float) -> Iterator[Batch]:
        """Batches as they arrive, until ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self._socket.poll(int(left * 1000)):
                return
            topic, sequence, payload = self._socket.recv_multipart()
            assert topic.decode() == self.topic
            decoded = msgspec.msgpack.decode(payload)
            yield Batch(int.from_bytes(sequence, "big"), list(decoded[1]))

    def close(self) -> None:
        self._socket.close()
        self._context.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stored_blocks(subscriber: Subscriber, prompt_ids: list[int], timeout: float = 60
                  ) -> list[dict[str, Any]]:
    """The ``BlockStored`` events whose tokens are the start of ``prompt_ids``, in order,
    once every full block of the prompt has been seen (or ``timeout`` passed)."""
    found: list[dict[str, Any]] = []
    for batch in subscriber.batches(timeout):
        for event in batch.events:
            if not isinstance(event, dict) or event.get("type") != "BlockStored":
                continue
            tokens = [t for e in found for t in e["token_ids"]] + list(event["token_ids"])
            if tokens == prompt_ids[:len(tokens)]:
                found.append(event)
        size = found[0]["block_size"] if found else 0
        if found and len([t for e in found for t in e["token_ids"]]) >= (
                len(prompt_ids) // size) * size:
            return found
    return found


def assert_prompt_published(subscriber: Subscriber, client: Any, model: str) -> None:
    """Send a prompt no cache holds (``client``: an httpx client on the server, with its key)
    and assert its full blocks come out of the publisher as ``BlockStored`` events, in order,
    the first with no parent, each block's token ids those of the prompt.

    A SUB socket receives only what is published after it has joined (ZMQ's slow joiner):
    a prompt published before that is missed, so up to three fresh prompts are tried."""
    words = " ".join(f"word{i}" for i in range(120))  # a few hundred tokens: several blocks
    tries = 3
    for _ in range(tries):
        prompt = f"{secrets.token_hex(8)} {words}"
        ids = client.post("/tokenize", json={"model": model, "prompt": prompt})
        assert ids.status_code == 200, ids.text
        prompt_ids = ids.json()["tokens"]
        r = client.post("/v1/completions", json={"model": model, "prompt": prompt,
                                                 "max_tokens": 1})
        assert r.status_code == 200, r.text
        found = stored_blocks(subscriber, prompt_ids, timeout=20)
        if not found:
            continue
        size = found[0]["block_size"]
        assert 0 < size <= len(prompt_ids) // 2, (size, len(prompt_ids))
        assert found[0]["parent_block_hash"] is None  # a prompt no cache held
        stored = [t for e in found for t in e["token_ids"]]
        assert stored == prompt_ids[:(len(prompt_ids) // size) * size]
        assert sum(len(e["block_hashes"]) for e in found) == len(prompt_ids) // size
        return
    raise AssertionError(f"no BlockStored event for the prompt in {tries} tries")
