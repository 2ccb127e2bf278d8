"""Unit tier: the Triton vLLM backend's tensors (runtime.protocol.triton and the v2 codec),
with no engine: tensors in, ``TextRequest`` out; answers out as tensors, parameters and the
hand-written ``ModelStreamInferResponse`` wire format."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import InferInput, InferRequest

from runtime.engine.base import Completion, Delta
from runtime.errors import ClientError
from runtime.protocol import triton, v2


def request(*tensors: tuple[str, str, Any], prompts: list[str] | None = None,
            **params: Any) -> InferRequest:
    prompts = prompts or ["hi"]
    inputs = [InferInput("text_input", [len(prompts)], "BYTES", prompts)]
    inputs += [InferInput(name, [1], datatype, [value]) for name, datatype, value in tensors]
    return InferRequest(model_name="m", infer_inputs=inputs, parameters=params)


def test_tensors_become_options_and_sampling_parameters() -> None:
    text = v2.decode_request(request(
        ("stream", "BOOL", True), ("exclude_input_in_output", "BOOL", False),
        ("sampling_parameters", "BYTES", json.dumps({"temperature": "0", "top_k": 5})),
        ("return_finish_reason", "BOOL", True), ("return_num_output_tokens", "BOOL", False),
        max_tokens=4))
    assert text.params == {"max_tokens": 4, "temperature": "0", "top_k": 5}
    assert text.options == triton.Options(stream=True, exclude_input=False,
                                          outputs=frozenset({"finish_reason"}))


def test_options_as_parameters_and_defaults() -> None:
    text = v2.decode_request(request(stream=True, return_num_input_tokens=True))
    assert text.options.stream and text.options.outputs == {"num_input_tokens"}
    assert text.params == {}
    assert v2.decode_request(request()).options == triton.Options()


def test_cumulative_logprob_asks_the_engine_for_logprobs() -> None:
    text = v2.decode_request(request(("return_cumulative_logprob", "BOOL", True)))
    assert text.params == {"logprobs": 0}
    text = v2.decode_request(request(("return_cumulative_logprob", "BOOL", True), logprobs=2))
    assert text.params == {"logprobs": 2}


def test_same_setting_both_ways_must_agree() -> None:
    same = request(("sampling_parameters", "BYTES", '{"temperature": "0.0"}'), temperature=0)
    assert v2.decode_request(same).params == {"temperature": "0.0"}
    assert v2.decode_request(request(("stream", "BOOL", True), stream=True)).options.stream


@pytest.mark.parametrize("req,needle", [
    (request(("sampling_parameters", "BYTES", '{"temperature": 0.5}'), temperature=0.0),
     "'temperature' is given twice"),
    (request(("stream", "BOOL", True), stream=False), "'stream' is given twice"),
    (request(("sampling_parameters", "BYTES", "{nope")), "malformed JSON"),
    (request(("sampling_parameters", "BYTES", "[1]")), "JSON object"),
    (request(("stream", "BYTES", "yes")), "datatype BOOL"),
    (request(("sampling_parameters", "BOOL", True)), "datatype BYTES"),
    (request(("return_logprobs", "BOOL", True)), "not supported"),
    (request(("priority_please", "BOOL", True)), "unexpected input tensor"),
    (request(stream="yes"), "must be a boolean"),
    (request(sampling_parameters="{}"), "input tensor"),
])
def test_bad_option_tensors(req: InferRequest, needle: str) -> None:
    with pytest.raises(ClientError) as err:
        v2.decode_request(req)
    assert needle in err.value.message


def test_switch_with_two_elements_is_rejected() -> None:
    req = request()
    req.inputs.append(InferInput("stream", [2], "BOOL", [True, True]))
    with pytest.raises(ClientError, match="exactly one element"):
        v2.decode_request(req)


def test_raw_grpc_tensors_decode() -> None:
    """tritonclient sends every tensor as raw bytes (raw_input_contents)."""
    grpc_request = pb.ModelInferRequest(model_name="m", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="text_input", datatype="BYTES", shape=[1]),
        pb.ModelInferRequest.InferInputTensor(name="stream", datatype="BOOL", shape=[1]),
        pb.ModelInferRequest.InferInputTensor(name="sampling_parameters", datatype="BYTES",
                                              shape=[1])],
        raw_input_contents=[_bytes_tensor(b"hello"), np.array([True]).tobytes(),
                            _bytes_tensor(b'{"max_tokens": "3"}')])
    text = v2.decode_request(InferRequest.from_grpc(grpc_request))
    assert text.prompts == ["hello"] and text.options.stream
    assert text.params == {"max_tokens": "3"}


def _bytes_tensor(value: bytes) -> bytes:
    return len(value).to_bytes(4, "little") + value


def test_answer_tensors_and_parameters() -> None:
    text = v2.decode_request(request(
        ("exclude_input_in_output", "BOOL", False), ("return_finish_reason", "BOOL", True),
        ("return_cumulative_logprob", "BOOL", True), ("return_num_input_tokens", "BOOL", True),
        ("return_num_output_tokens", "BOOL", True), prompts=["a", "b"]))
    completions = [Completion(" x", "stop", 3, 2, -1.5), Completion(" y", "length", 4, 5, -2.0)]
    response = v2.encode_response(InferRequest("m", []), "m", completions, text)
    outputs = {o.name: (o.datatype, o.shape, o.data) for o in response.outputs}
    assert outputs == {
        "text_output": ("BYTES", [2], ["a x", "b y"]),
        "finish_reason": ("BYTES", [2], ["stop", "length"]),
        "cumulative_logprob": ("FP32", [2], [-1.5, -2.0]),
        "num_input_tokens": ("UINT32", [2], [3, 4]),
        "num_output_tokens": ("UINT32", [2], [2, 5]),
    }
    assert response.parameters == {"finish_reason": "stop,length", "prompt_tokens": 7,
                                   "completion_tokens": 7}
    grpc_response = response.to_grpc()  # every datatype has a gRPC contents field
    assert list(grpc_response.outputs[4].contents.uint_contents) == [2, 5]


def test_plain_answer_still_carries_finish_reason_and_counts() -> None:
    text = v2.decode_request(request())
    response = v2.encode_response(InferRequest("m", []), "m", [Completion("ok", "stop", 1, 1)],
                                  text)
    assert [o.name for o in response.outputs] == ["text_output"]
    assert response.parameters == {"finish_reason": "stop", "prompt_tokens": 1,
                                   "completion_tokens": 1}


def test_streamed_pieces() -> None:
    text = v2.decode_request(request(("stream", "BOOL", True),
                                     ("exclude_input_in_output", "BOOL", False),
                                     ("return_num_output_tokens", "BOOL", True),
                                     ("return_finish_reason", "BOOL", True), prompts=["p:"]))
    first = v2.encode_delta(InferRequest("m", []), "m", Delta(0, " a", tokens=2), text,
                            first=True, final=False)
    assert first.outputs[0].data == ["p: a"] and first.outputs[2].data == [2]
    assert first.outputs[1].data == ["None"]  # Triton's backend: str(None) until finished
    assert first.parameters == {"triton_final_response": False}
    last = v2.encode_delta(InferRequest("m", []), "m", Delta(0, "", "stop", 1, 2, 0), text,
                           first=False, final=True)
    assert last.outputs[1].data == ["stop"]
    assert last.parameters == {"triton_final_response": True, "finish_reason": "stop",
                               "prompt_tokens": 1, "completion_tokens": 2}


def _stream_response_class() -> Any:
    """Triton's ModelStreamInferResponse, built in a private descriptor pool (tritonclient's
    own module cannot be imported next to kserve's); field 2 read as bytes."""
    proto = descriptor_pb2.FileDescriptorProto(name="t.proto", package="tritontest",
                                               syntax="proto3")
    msg = proto.message_type.add(name="ModelStreamInferResponse")
    msg.field.add(name="error_message", number=1, type=9, label=1)
    msg.field.add(name="infer_response", number=2, type=12, label=1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tritontest.ModelStreamInferResponse"))


@pytest.mark.parametrize("error", ["", "bad max_tokens é" * 20])
def test_stream_response_wire_format(error: str) -> None:
    inner = pb.ModelInferResponse(model_name="m", id="x" * 300).SerializeToString()
    parsed = _stream_response_class().FromString(triton.stream_response(inner, error))
    assert parsed.error_message == error
    assert pb.ModelInferResponse.FromString(parsed.infer_response).id == "x" * 300


def test_metadata_lists_every_tensor() -> None:
    names = {i["name"] for i in v2.input_metadata()}
    assert names == {"text_input", "stream", "sampling_parameters", "exclude_input_in_output",
                     *triton.SWITCHES}
    assert {o["name"]: o["datatype"] for o in v2.output_metadata()} == {
        "text_output": "BYTES", **triton.OUTPUTS}
