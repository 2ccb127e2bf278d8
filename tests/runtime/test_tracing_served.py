"""Real process: ``--otlp-traces-endpoint`` gives one tree per request, the runtime's span
with vLLM's ``llm_request`` span as its child, in the caller's trace, on every protocol.

The server is the session's LoRA server (tests/conftest.py), started with its traces exported
to the session's real OTLP/gRPC receiver in this process (tests/support/otlp.py), where both
the runtime and vLLM export them; a request to its adapter ``attn-a`` is traced under that name.
"""

from __future__ import annotations

import secrets
from typing import Any

import grpc
import httpx
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from tests.conftest import LORA_KEY
from tests.runtime.conftest import v2_body
from tests.runtime.test_triton_pipeline import infer_request
from tests.support.otlp import Receiver
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

ADAPTER = "attn-a"


def _send(server: ServerProcess, kind: str, traceparent: str) -> None:
    headers = {"traceparent": traceparent, "authorization": f"Bearer {LORA_KEY}"}
    if kind == "stream":
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stream = channel.stream_stream(
                "/inference.GRPCInferenceService/ModelStreamInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=lambda b: b)
            answers = list(stream(iter([infer_request("The capital of France is",
                                                      max_tokens=4)]),
                                  metadata=tuple(headers.items()), timeout=120))
            assert answers
        return
    if kind == "grpc":
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString)
            infer(infer_request("The capital of France is", stream=False, max_tokens=4),
                  metadata=tuple(headers.items()), timeout=120)
        return
    path, body = {
        "openai": ("/openai/v1/completions",
                   {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 4}),
        "adapter": ("/openai/v1/completions",
                    {"model": ADAPTER, "prompt": "The capital of France is", "max_tokens": 4}),
        "v2": ("/v2/models/smollm2/infer", v2_body(["The capital of France is"], max_tokens=4)),
        "generate": ("/v2/models/smollm2/generate",
                     {"text_input": "The capital of France is", "parameters": {"max_tokens": 4}}),
        "v1": ("/v1/models/smollm2:predict",
               {"instances": ["The capital of France is"], "parameters": {"max_tokens": 4}}),
    }[kind]
    r = httpx.post(server.url + path, json=body, headers=headers, timeout=120)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("kind, name", [
    ("openai", "openai completion"), ("adapter", "openai completion"), ("v2", "v2-rest infer"),
    ("generate", "v2-generate generate"), ("v1", "v1-rest predict"),
    ("grpc", "v2-grpc ModelInfer"),
    ("stream", "v2-grpc ModelStreamInfer")])
def test_the_runtimes_span_is_the_parent_of_vllms(lora_server: ServerProcess,
                                                  otlp_receiver: Receiver,
                                                  kind: str, name: str) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    _send(lora_server, kind, f"00-{trace_id}-{parent}-01")
    spans = otlp_receiver.wait_for(trace_id, {name, "llm_request"}, timeout=30)
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    assert set(by_name) == {name, "llm_request"}, spans
    [ours], [vllms] = by_name[name], by_name["llm_request"]
    assert ours.parent_span_id == parent  # the caller's trace, continued
    assert vllms.parent_span_id == ours.span_id  # vLLM's span is the runtime's child
    assert ours.attributes["kserve.outcome"] == "success"
    assert ours.attributes["gen_ai.request.model"] == (ADAPTER if kind == "adapter" else "smollm2")
    assert ours.attributes["gen_ai.usage.completion_tokens"] == 4
    assert ours.attributes["gen_ai.usage.prompt_tokens"] > 0
    assert ours.attributes["kserve.time_to_engine_s"] >= 0
