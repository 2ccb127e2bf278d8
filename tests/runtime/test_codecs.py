"""Unit tier: the protocol codecs (v2 tensors, generate, KServe v1) and error rendering, on
their own: wire format in, ``TextRequest`` out, or a ``ClientError`` with a clear message."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kserve.protocol.infer_type import InferInput, InferRequest

from runtime import routes
from runtime.errors import ClientError, EngineUnavailableError, OverloadedError
from runtime.protocol import v2
from runtime.protocol.generate import decode_generate
from runtime.protocol.http_errors import render
from runtime.protocol.v1 import decode_predict


def infer(data: Any, *, shape: list[int] | None = None, datatype: str = "BYTES",
          name: str = "text_input", **params: Any) -> InferRequest:
    shape = shape if shape is not None else [len(data)]
    return InferRequest(model_name="m", infer_inputs=[InferInput(name, shape, datatype, data)],
                        parameters=params)


def test_v2_prompts_parameters_and_chat_switch() -> None:
    text = v2.decode_request(infer(["a", "b"], max_tokens=3, apply_chat_template=True,
                                   binary_data_output=False))
    assert text.prompts == ["a", "b"] and text.chat
    assert text.params == {"max_tokens": 3}


@pytest.mark.parametrize("request_,needle", [
    (infer(["a"], name="prompt"), "missing input tensor 'text_input'"),
    (infer([1.0], datatype="FP32"), "datatype BYTES"),
    (infer(["a", "b"], shape=[3]), "holds 2 elements"),
    (infer(["a"], shape=[1, 2]), "shape [B] or [B, 1]"),
    (infer([], shape=[0]), "empty batch"),
    (infer([b"\xff"]), "not UTF-8"),
    (infer(["\ud800"]), "unpaired surrogate"),
    (infer(["a"], apply_chat_template="yes"), "must be a boolean"),
])
def test_v2_bad_tensors(request_: InferRequest, needle: str) -> None:
    with pytest.raises(ClientError, match=None) as err:
        v2.decode_request(request_)
    assert needle in err.value.message


def test_generate_merges_top_level_parameters() -> None:
    text = decode_generate({"text_input": "hi", "temperature": 0, "stream": True,
                            "parameters": {"max_tokens": 2}})
    assert text.prompts == ["hi"] and text.params == {"temperature": 0, "max_tokens": 2}


@pytest.mark.parametrize("body,needle", [
    ({"text_input": None}, "missing 'text_input'"),
    ({"text_input": ["a"]}, "must be a string"),
    ({"text_input": "a", "parameters": "x"}, "JSON object"),
    ("text", "JSON object"),
])
def test_generate_bad_bodies(body: Any, needle: str) -> None:
    with pytest.raises(ClientError) as err:
        decode_generate(body)
    assert needle in err.value.message


def test_v1_predict_contract() -> None:
    text = decode_predict({"instances": ["a", "b"], "parameters": {"max_tokens": 1}})
    assert text.prompts == ["a", "b"] and text.params == {"max_tokens": 1}
    with pytest.raises(ClientError, match="non-empty list"):
        decode_predict({"instances": []})


def test_errors_rendered_once_per_protocol() -> None:
    status, headers, body = render(ClientError("bad n"), routes.OPENAI)
    assert status == 400 and json.loads(body) == {"error": {
        "message": "bad n", "type": "BadRequestError", "param": None, "code": 400}}
    status, headers, body = render(OverloadedError("full"), routes.V2_GENERATE)
    assert status == 429 and headers["retry-after"] == "1"
    assert json.loads(body) == {"error": "full"}
    status, headers, _ = render(EngineUnavailableError("loading"), routes.V2_REST)
    assert status == 503 and headers["retry-after"] == "5"
