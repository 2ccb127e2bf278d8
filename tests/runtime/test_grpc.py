"""gRPC v2 with kserve's InferenceGRPCClient, and with tritonclient.grpc in a subprocess
(the two register the same protobuf symbols and cannot share a process; docs/platform-notes.md)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.runtime.conftest import MODEL
from tests.support.triton_process import run_client

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "What is the capital of Germany?"]


def grpc_infer(port: int, prompts: list[str], params: dict, model: str = MODEL,
               datatype: str = "BYTES", shape: list[int] | None = None,
               timeout: float = 120, metadata: list[tuple[str, str]] | None = None,
               input_name: str = "text_input"):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    # kserve's client (and KServe's proto) has no double parameter: send floats as strings,
    # which the server reads with the same validation as JSON numbers.
    params = {k: str(v) if isinstance(v, float) else v for k, v in params.items()}

    async def go():
        client = InferenceGRPCClient(url=f"127.0.0.1:{port}", timeout=timeout, retries=0)
        try:
            req = InferRequest(model_name=model, infer_inputs=[
                InferInput(input_name, shape or [len(prompts)], datatype, data=prompts)],
                parameters=params)
            return await client.infer(req, headers=metadata)
        finally:
            await client.close()

    return asyncio.run(go())


def grpc_stub(port: int):
    """A raw stub of KServe's GRPCInferenceService (every RPC, not only the client's), and the
    protobuf module of its messages."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return pb_grpc.GRPCInferenceServiceStub(channel), pb


def test_kserve_grpc_client_two_prompts(predictor) -> None:
    res = grpc_infer(predictor.grpc_port, PROMPTS,
                     {"max_tokens": 20, "temperature": 0.0, "apply_chat_template": True})
    texts = [t.decode() if isinstance(t, bytes) else t for t in res.outputs[0].data]
    assert "Paris" in texts[0] and "Berlin" in texts[1]


def test_grpc_health_and_metadata(predictor) -> None:
    from kserve import InferenceGRPCClient

    async def go():
        client = InferenceGRPCClient(url=f"127.0.0.1:{predictor.grpc_port}", retries=0)
        try:
            return (await client.is_server_live(), await client.is_server_ready(),
                    await client.is_model_ready(MODEL))
        finally:
            await client.close()

    assert asyncio.run(go()) == (True, True, True)
    stub, pb = grpc_stub(predictor.grpc_port)
    server = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30)
    assert server.name == "kserve" and "generate" in server.extensions
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=30)
    assert meta.name == MODEL
    assert [(t.name, t.datatype) for t in meta.inputs][0] == ("text_input", "BYTES")
    assert "text_output" in [t.name for t in meta.outputs]
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in err.value.details()


@pytest.mark.parametrize("kwargs,code,needle", [
    ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "nope"),
    ({"datatype": "FP32", "prompts": [1.0]}, grpc.StatusCode.INVALID_ARGUMENT, "BYTES"),
    ({"shape": [3]}, grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    ({"prompts": [], "shape": [0]}, grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
    ({"params": {"max_tokens": -1}}, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    ({"params": {"temperature": -1.0}}, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    ({"params": {"max_tokens": "many"}}, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    ({"prompts": ["hello " * 3000]}, grpc.StatusCode.INVALID_ARGUMENT, "context"),
    ({"input_name": "prompt"}, grpc.StatusCode.INVALID_ARGUMENT, "text_input"),
    ({"params": {"max_token": 3}}, grpc.StatusCode.INVALID_ARGUMENT, "max_token"),
    ({"prompts": ["x" * (9 * 1024 * 1024)]}, grpc.StatusCode.RESOURCE_EXHAUSTED,
     "larger than max"),
])
def test_grpc_bad_input(predictor, http, kwargs: dict, code, needle: str) -> None:
    from tests.runtime.conftest import assert_still_serving

    args = {"prompts": ["hi"], "params": {"max_tokens": 2}, **kwargs}
    with pytest.raises(grpc.RpcError) as err:
        grpc_infer(predictor.grpc_port, args.pop("prompts"), args.pop("params"), **args)
    assert err.value.code() == code, err.value.details()
    assert needle in err.value.details()
    assert_still_serving(http)


TRITON_GRPC_SCRIPT = """
    import sys
    import numpy as np
    import tritonclient.grpc as g
    c = g.InferenceServerClient(url=sys.argv[1])
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("smollm2")
    i = g.InferInput("text_input", [1], "BYTES")
    i.set_data_from_numpy(np.array([b"What is the capital of France?"], dtype=object))
    r = c.infer("smollm2", [i], parameters={"max_tokens": 20, "temperature": 0.0,
                                             "apply_chat_template": True})
    print(r.as_numpy("text_output")[0].decode())
    # tritonclient sends Python floats as Triton's double_param: 0.0 must arrive, not be
    # dropped (the model's default would sample). Same text twice at 0.0; seeds differ at 1.0.
    story = g.InferInput("text_input", [1], "BYTES")
    story.set_data_from_numpy(np.array([b"Once upon a time, a dragon"], dtype=object))
    def text(**params):
        r = c.infer("smollm2", [story], parameters={"max_tokens": 30, **params})
        return r.as_numpy("text_output")[0].decode()
    print("GREEDY-SAME", text(temperature=0.0) == text(temperature=0.0))
    print("SEEDS-DIFFER", text(temperature=1.0, seed=1) != text(temperature=1.0, seed=2))
"""


def test_tritonclient_grpc(predictor) -> None:
    out = run_client(TRITON_GRPC_SCRIPT, f"127.0.0.1:{predictor.grpc_port}", timeout=120)
    assert "Paris" in out.stdout
    assert "GREEDY-SAME True" in out.stdout and "SEEDS-DIFFER True" in out.stdout, out.stdout
