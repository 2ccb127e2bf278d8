"""Unit tier: LoRA adapters as models (runtime.adapters, runtime.repository, the REST and gRPC
repository codecs) with files built here and a fake engine. Whether vLLM then serves the
adapter's real output is proven against the real process (test_adapters.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from runtime.adapters import (
    AdapterConflictError,
    AdapterError,
    AdapterSet,
    base_shapes,
    check_folder,
)
from runtime.errors import ForbiddenError, ModelNotFoundError
from runtime.protocol import triton
from runtime.repository import lora_path_of
from tests.runtime.test_pipeline import requests_total, send
from tests.support.app import assemble
from tests.support.fake_engine import FakeEngine

Q = "model.layers.0.self_attn.q_proj"
LORA = f"base_model.model.{Q}"


def write_base(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"{Q}.weight": np.zeros((8, 4), np.float32),
               "model.embed_tokens.weight": np.zeros((10, 4), np.float32)},
              str(folder / "model.safetensors"))
    return folder


def write_adapter(folder: Path, *, rank: int = 2, a: tuple[int, int] | None = None,
                  b: tuple[int, int] | None = None, module: str = LORA,
                  config: Any = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        config if config is not None else {"peft_type": "LORA", "r": rank}))
    save_file({f"{module}.lora_A.weight": np.zeros(a or (rank, 4), np.float32),
               f"{module}.lora_B.weight": np.zeros(b or (8, rank), np.float32)},
              str(folder / "adapter_model.safetensors"))
    return folder


@pytest.fixture
def base(tmp_path: Path) -> dict[str, list[int]]:
    return base_shapes(write_base(tmp_path / "base"))


def test_a_fitting_adapter_passes_with_its_rank(tmp_path: Path, base: dict) -> None:
    assert check_folder(str(write_adapter(tmp_path / "a")), base=base, max_rank=8) == 2


@pytest.mark.parametrize("make, words", [
    (lambda p: p / "nowhere", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no adapter_config.json"),
    (lambda p: write_adapter(p / "x", config={"peft_type": "PREFIX_TUNING", "r": 2}),
     "is not a LoRA adapter"),
    (lambda p: write_adapter(p / "x", config=[1]), "is not a LoRA adapter"),
    (lambda p: write_adapter(p / "x", config={"peft_type": "LORA", "r": "8"}), "valid rank"),
    (lambda p: write_adapter(p / "x", rank=16), "rank 16, above this server's --max-lora-rank 8"),
    (lambda p: write_adapter(p / "x", config={"peft_type": "LORA", "r": 2,
                                              "rank_pattern": {"q_proj": 32}}), "rank 32"),
    (lambda p: write_adapter(p / "x", a=(2, 6)), "does not fit this base model"),
    (lambda p: write_adapter(p / "x", b=(12, 2)), "does not fit this base model"),
    (lambda p: write_adapter(p / "x", module="base_model.model.model.layers.7.mlp.up_proj"),
     "which the base model does not have"),
])
def test_a_folder_that_cannot_be_loaded_says_why(tmp_path: Path, base: dict, make: Any,
                                                 words: str) -> None:
    with pytest.raises(AdapterError, match=words.replace(".", r"\.")):
        check_folder(str(make(tmp_path)), base=base, max_rank=8)


def test_pickled_and_missing_weights_are_refused(tmp_path: Path, base: dict) -> None:
    folder = write_adapter(tmp_path / "p")
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="no adapter_model.safetensors"):
        check_folder(str(folder), base=base, max_rank=8)
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(AdapterError, match="pickled weights"):
        check_folder(str(folder), base=base, max_rank=8)
    (folder / "adapter_model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(AdapterError, match="not a safetensors file"):
        check_folder(str(folder), base=base, max_rank=8)


def test_the_adapter_set_is_bounded_and_keeps_the_base_names() -> None:
    names = AdapterSet(["smollm2", "alias"], max_adapters=1)
    with pytest.raises(ForbiddenError):
        names.check_new("alias")
    with pytest.raises(AdapterError, match="not allowed"):
        names.check_new("a/b")
    with pytest.raises(AdapterError, match="not allowed"):
        names.check_new("x" * 129)
    names.check_new("a1")
    from runtime.adapters import Adapter

    names.add(Adapter("a1", "/p"))
    with pytest.raises(AdapterConflictError):
        names.check_new("a1")
    with pytest.raises(AdapterError, match="--max_adapters 1"):
        names.check_new("a2")
    with pytest.raises(ForbiddenError):
        names.check_removable("smollm2")
    with pytest.raises(ModelNotFoundError):
        names.check_removable("a2")


@pytest.mark.parametrize("parameters, expected", [
    ({"lora_path": "/a"}, "/a"),
    ({"config": json.dumps({"lora_path": "/b"})}, "/b"),
    ({"config": b'{"lora_path": "/c"}'}, "/c"),
])
def test_the_folder_comes_from_lora_path_or_tritons_config(parameters: Any,
                                                           expected: str) -> None:
    assert lora_path_of(parameters) == expected


@pytest.mark.parametrize("parameters, words", [
    (None, "lora_path"), ({}, "lora_path"), ([1], "JSON object"), ({"lora_path": 3}, "string"),
    ({"lora_path": ""}, "non-empty"), ({"config": "{"}, "config"), ({"config": "[]"}, "config"),
])
def test_a_load_without_a_usable_folder_says_how(parameters: Any, words: str) -> None:
    with pytest.raises(AdapterError, match=words):
        lora_path_of(parameters)


def test_tritons_repository_request_is_read_from_kserves_message() -> None:
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    value = triton.field(3, b"/mnt/adapters/a1")  # ModelRepositoryParameter.string_param
    entry = triton.field(1, b"lora_path") + triton.field(2, value)
    flag = triton.field(1, b"flag") + triton.field(2, bytes([1 << 3, 1]))  # bool_param
    wire = triton.field(2, b"a1") + triton.field(3, entry) + triton.field(3, flag)
    name, params = triton.repository_request(pb.RepositoryModelLoadRequest.FromString(wire))
    assert (name, params) == ("a1", {"lora_path": "/mnt/adapters/a1", "flag": True})
    kserve_form = pb.RepositoryModelLoadRequest(model_name="m")
    assert triton.repository_request(kserve_form) == ("m", {})


def _app(tmp_path: Path, **settings: Any) -> Any:
    write_base(tmp_path / "base")
    return assemble(engine=FakeEngine(max_lora_rank=8), model_dir=str(tmp_path / "base"),
                    **settings)


def test_load_serve_and_unload_through_the_rest_routes(tmp_path: Path) -> None:
    app = _app(tmp_path, enable_adapter_loading=True, api_key="k", operator_key="op",
               allowed_adapter_dirs=[str(tmp_path)])
    key, operator = {"authorization": "Bearer k"}, {"authorization": "Bearer op"}
    folder = str(write_adapter(tmp_path / "a1"))
    body = {"parameters": {"lora_path": folder}}
    assert send(app, "POST", "/v2/repository/models/a1/load", body).status_code == 401
    r = send(app, "POST", "/v2/repository/models/a1/load", body, operator)
    assert r.status_code == 200 and r.json() == {"name": "a1", "load": True}, r.text
    assert app.engine.loaded == {"a1": os.path.realpath(folder)}
    assert send(app, "GET", "/v2/models/a1", headers=key).json()["name"] == "a1"
    index = send(app, "POST", "/v2/repository/index", {"ready": True}, key).json()
    assert {m["name"] for m in index} == {"smollm2", "a1"}
    before = requests_total(model="a1", protocol="v2-generate", outcome="success")
    r = send(app, "POST", "/v2/models/a1/generate", {"text_input": "x y"}, key)
    assert r.status_code == 200 and r.json()["model_name"] == "a1", r.text
    assert requests_total(model="a1", protocol="v2-generate", outcome="success") == before + 1
    r = send(app, "POST", "/v2/repository/models/a1/unload", None, operator)
    assert r.status_code == 200 and r.json() == {"name": "a1", "unload": True}, r.text
    assert app.engine.loaded == {}
    assert requests_total(model="a1") == 0, "an unloaded adapter's series are dropped"
    r = send(app, "POST", "/v2/models/a1/generate", {"text_input": "x y"}, key)
    assert r.status_code == 404, r.text
    assert send(app, "GET", "/v2/models/a1", headers=key).status_code == 404


def test_loading_is_refused_unless_switched_on(tmp_path: Path) -> None:
    app = _app(tmp_path)
    r = send(app, "POST", "/v2/repository/models/a1/load", {"parameters": {"lora_path": "/x"}})
    assert r.status_code == 403 and "--enable_adapter_loading" in r.json()["error"], r.text
    assert "--operator_key" in r.json()["error"], r.text
    r = send(app, "POST", "/v2/repository/models/smollm2/unload")
    assert r.status_code == 403, r.text
    # with an operator key and loading still off: the base model's own refusal, then "off"
    app = _app(tmp_path, operator_key="op")
    operator = {"authorization": "Bearer op"}
    r = send(app, "POST", "/v2/repository/models/smollm2/unload", None, operator)
    assert r.status_code == 403 and "base model" in r.json()["error"], r.text
    r = send(app, "POST", "/v2/repository/models/a1/load", {"parameters": {"lora_path": "/x"}},
             operator)
    assert r.status_code == 403 and "--enable_adapter_loading" in r.json()["error"], r.text
