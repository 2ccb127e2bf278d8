"""Unit tier: two roles (inference key, operator key) and the folders adapters load from.

Operator actions (repository load/unload on REST and gRPC, vLLM's operator routes) need the
operator key, which is never the inference key; adapter folders must resolve, symlinks and
``..`` included, under ``--allowed_adapter_dirs``, and any other path gets one fixed 403 that
does not say whether it exists. vLLM's own ``/openai/v1/load_lora_adapter`` goes through the
same checks. Against the real process: tests/runtime/test_adapters.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import types
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from runtime import cli
from runtime.admission import Admission
from runtime.auth import ApiKeyError, redact_argv
from runtime.lifecycle import Lifecycle
from runtime.protocol import triton
from runtime.repository import OUTSIDE_ALLOWED_DIRS
from runtime.server import build_pipeline
from runtime.settings import RuntimeSettings
from tests.runtime.test_cli import usage_error
from tests.runtime.test_pipeline import send
from tests.runtime.test_repository import write_adapter, write_base
from tests.support.app import Assembled, assemble
from tests.support.fake_engine import FakeEngine

INFERENCE, OPERATOR = "inference-key", "operator-key"
AS_CLIENT = {"authorization": f"Bearer {INFERENCE}"}
AS_OPERATOR = {"authorization": f"Bearer {OPERATOR}"}


@pytest.fixture(autouse=True)
def _no_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_KEY", raising=False)
    monkeypatch.delenv("OPERATOR_API_KEY", raising=False)


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    path = tmp_path / "allowed"
    path.mkdir()
    return path


def _app(tmp_path: Path, allowed: Path | None = None, **settings: Any) -> Assembled:
    write_base(tmp_path / "base")
    values: dict[str, Any] = {"enable_adapter_loading": True, "api_key": INFERENCE,
                              "operator_key": OPERATOR,
                              "allowed_adapter_dirs": [str(allowed)] if allowed else [],
                              **settings}
    return assemble(engine=FakeEngine(max_lora_rank=8), model_dir=str(tmp_path / "base"),
                    **{k: v for k, v in values.items() if v is not None})


def _load(app: Assembled, name: str, path: str, headers: dict[str, str] = AS_OPERATOR) -> Any:
    return send(app, "POST", f"/v2/repository/models/{name}/load",
                {"parameters": {"lora_path": path}}, headers)


# ---- start-up: the roles' flags ----

def _settings(tmp_path: Path, **values: Any) -> RuntimeSettings:
    return RuntimeSettings(model_name="smollm2", model_dir=str(tmp_path), **values)


def _pipeline(settings: RuntimeSettings) -> Any:
    return build_pipeline(settings, Lifecycle(), Admission("smollm2", capacity=4,
                                                           max_waiting=None))


@pytest.mark.parametrize("values,needle", [
    ({"enable_operator_routes": True, "api_key": INFERENCE},
     "--enable_operator_routes requires an operator key"),
    ({"enable_adapter_loading": True, "api_key": INFERENCE},
     "--enable_adapter_loading requires an operator key"),
    ({"enable_adapter_loading": True}, "--enable_adapter_loading requires an operator key"),
    ({"api_key": "dup-key-42", "operator_key": "dup-key-42"},
     "must differ from the inference key"),
])
def test_operator_actions_without_their_own_key_refuse_to_start(
        tmp_path: Path, values: dict, needle: str) -> None:
    with pytest.raises(ApiKeyError) as err:
        _pipeline(_settings(tmp_path, **values))
    assert needle in str(err.value)
    assert "dup-key-42" not in str(err.value)  # no key in the message


def test_equal_keys_from_a_file_and_the_environment_refuse_to_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "op").write_text("shared\n")
    monkeypatch.setenv("API_KEY", "shared")
    with pytest.raises(ApiKeyError, match="must differ"):
        _pipeline(_settings(tmp_path, operator_key_file=str(tmp_path / "op")))


def test_the_operator_key_comes_from_a_flag_a_file_or_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "op").write_text("from-file\n")
    monkeypatch.setenv("OPERATOR_API_KEY", "from-env")
    for settings, key in [
            (cli.parse(["--model_dir", str(tmp_path)]), "from-env"),
            (cli.parse(["--model_dir", str(tmp_path), "--operator_key", "from-flag"]),
             "from-flag"),
            (cli.parse(["--model_dir", str(tmp_path), f"--operator_key_file={tmp_path / 'op'}"]),
             "from-file")]:
        pipeline = _pipeline(settings)
        assert pipeline.operator_key.accepts(f"Bearer {key}"), key
        assert not pipeline.operator_key.accepts("Bearer other")


@pytest.mark.parametrize("argv,env,needle", [
    (["--operator_key="], None, "--operator_key is empty"),
    (["--operator_key_file="], None, "--operator_key_file is empty"),
    ([], "", "$OPERATOR_API_KEY is set but empty"),
    (["--operator_key=a", "--operator_key_file=/f"], None, "mutually exclusive"),
    (["--enable_adapter_loading=true", "--operator_key=a"], None,
     "--enable_adapter_loading needs --allowed_adapter_dirs"),
    (["--allowed_adapter_dirs=/no/such/folder"], None, "/no/such/folder is not a folder"),
    (["--allowed_adapter_dirs="], None, "--allowed_adapter_dirs is empty"),
])
def test_operator_flags_that_cannot_be_honoured_are_usage_errors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], env: str | None, needle: str) -> None:
    if env is not None:
        monkeypatch.setenv("OPERATOR_API_KEY", env)
    assert needle in usage_error(tmp_path, argv, capsys)


def test_allowed_adapter_dirs_take_commas_and_repeats(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    settings = cli.parse([f"--model_dir={tmp_path}", f"--allowed_adapter_dirs={tmp_path}/a,"
                          f"{tmp_path}/b", "--allowed_adapter_dirs", f"{tmp_path}/c"])
    assert settings.allowed_adapter_dirs == [f"{tmp_path}/{n}" for n in "abc"]
    assert cli.parse([f"--model_dir={tmp_path}"]).allowed_adapter_dirs == []


def test_printed_commands_hide_the_operator_key() -> None:
    shown = " ".join(redact_argv(["python", "-m", "runtime", "--operator_key", "op1",
                                  "--operator-key=op2", "--operator_key_file", "/run/op"]))
    assert "op1" not in shown and "op2" not in shown and "/run/op" in shown


# ---- the roles on the REST routes ----

def test_only_the_operator_key_loads_and_unloads(tmp_path: Path, allowed: Path) -> None:
    app = _app(tmp_path, allowed)
    folder = str(write_adapter(allowed / "a1"))
    r = _load(app, "a1", folder, headers={})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
    r = _load(app, "a1", folder, headers={"authorization": "Bearer wrong"})
    assert r.status_code == 401, r.text
    r = _load(app, "a1", folder, headers=AS_CLIENT)  # a client, not an operator
    assert r.status_code == 403 and "operator key" in r.json()["error"], r.text
    assert app.engine.loaded == {}
    assert _load(app, "a1", folder).json() == {"name": "a1", "load": True}
    # the operator key is not an inference key; the inference key reads the index
    r = send(app, "POST", "/v2/models/a1/generate", {"text_input": "x y"}, AS_OPERATOR)
    assert r.status_code == 401, r.text
    r = send(app, "POST", "/v2/models/a1/generate", {"text_input": "x y"}, AS_CLIENT)
    assert r.status_code == 200 and r.json()["text_output"] == "y x", r.text
    index = send(app, "POST", "/v2/repository/index", {}, AS_CLIENT)
    assert index.status_code == 200 and "a1" in {m["name"] for m in index.json()}
    r = send(app, "POST", "/v2/repository/models/a1/unload", None, AS_CLIENT)
    assert r.status_code == 403 and "operator key" in r.json()["error"], r.text
    assert app.engine.loaded == {"a1": os.path.realpath(folder)}
    r = send(app, "POST", "/v2/repository/models/a1/unload", None, AS_OPERATOR)
    assert r.status_code == 200 and app.engine.loaded == {}, r.text


def test_without_an_operator_key_loading_is_off(tmp_path: Path, allowed: Path) -> None:
    folder = str(write_adapter(allowed / "a1"))
    for settings in ({"api_key": INFERENCE, "enable_adapter_loading": False},
                     {"api_key": None, "enable_adapter_loading": False}):
        app = _app(tmp_path, allowed, operator_key=None, **settings)
        r = _load(app, "a1", folder, headers=AS_CLIENT)
        assert r.status_code == 403, r.text
        assert "--operator_key" in r.json()["error"], r.text
        r = send(app, "POST", "/v2/repository/models/smollm2/unload", None, AS_CLIENT)
        assert r.status_code == 403, r.text
        assert app.engine.loaded == {}
    app = _app(tmp_path, allowed, operator_key=None, enable_adapter_loading=False)
    assert _load(app, "a1", folder, headers={}).status_code == 401  # the client key first


def test_an_operator_key_file_that_empties_refuses_until_restored(
        tmp_path: Path, allowed: Path) -> None:
    key_file = tmp_path / "operator-key"
    key_file.write_text(OPERATOR + "\n")
    app = _app(tmp_path, allowed, operator_key=None, operator_key_file=str(key_file))
    folder = str(write_adapter(allowed / "a1"))
    key_file.write_text("")
    os.utime(key_file, ns=(1, 1))
    assert _load(app, "a1", folder).status_code == 401
    key_file.unlink()
    assert _load(app, "a1", folder).status_code == 401
    key_file.write_text(OPERATOR + "\n")
    assert _load(app, "a1", folder).status_code == 200


def test_keys_rotated_into_the_same_value_refuse_operator_actions(
        tmp_path: Path, allowed: Path) -> None:
    key_file = tmp_path / "operator-key"
    key_file.write_text(OPERATOR + "\n")
    app = _app(tmp_path, allowed, operator_key=None, operator_key_file=str(key_file))
    key_file.write_text(INFERENCE + "\n")  # a botched rotation: every client an operator
    os.utime(key_file, ns=(1, 1))
    r = _load(app, "a1", str(write_adapter(allowed / "a1")), headers=AS_CLIENT)
    assert r.status_code == 403 and "differ" in r.json()["error"], r.text
    assert app.engine.loaded == {}


# ---- the folders adapters load from ----

def outside_paths(tmp_path: Path, allowed: Path) -> dict[str, str]:
    """Paths outside ``allowed`` of every kind: the fixed 403 must not tell them apart."""
    outside = tmp_path / "outside"
    real = write_adapter(outside / "real")
    (outside / "file").write_text("x")
    unreadable = outside / "unreadable"
    unreadable.mkdir()
    unreadable.chmod(0)
    (allowed / "escape").symlink_to(real, target_is_directory=True)
    (allowed / "dangling").symlink_to(outside / "nowhere")
    sneaky = allowed / "sneaky"  # the folder is inside, its weights are not
    sneaky.mkdir()
    shutil.copy(real / "adapter_config.json", sneaky)
    (sneaky / "adapter_model.safetensors").symlink_to(real / "adapter_model.safetensors")
    return {
        "a real adapter": str(real),
        "a missing folder": str(outside / "nowhere"),
        "a file": str(outside / "file"),
        "an unreadable folder": str(unreadable),
        "a symlink out": str(allowed / "escape"),
        "a dangling symlink out": str(allowed / "dangling"),
        "dot-dot": f"{allowed}/../outside/real",
        "a relative path": "relative/folder",
        "the root": "/",
        "weights linked from outside": str(sneaky),
        "a NUL byte": f"{allowed}/a\x00b",
    }


def test_a_path_outside_the_allowed_dirs_gets_one_fixed_403(tmp_path: Path,
                                                            allowed: Path) -> None:
    app = _app(tmp_path, allowed)
    answers = {}
    for case, path in outside_paths(tmp_path, allowed).items():
        r = _load(app, "a1", path)
        assert r.status_code == 403, (case, r.text)
        answers[case] = r.json()
    assert all(a == {"error": OUTSIDE_ALLOWED_DIRS} for a in answers.values()), answers
    assert "--allowed_adapter_dirs" in OUTSIDE_ALLOWED_DIRS
    assert app.engine.loaded == {}


def test_inside_the_allowed_dirs_loads_by_real_path_and_says_why_not(
        tmp_path: Path, allowed: Path) -> None:
    app = _app(tmp_path, allowed)
    r = _load(app, "a1", str(allowed / "nowhere"))
    assert r.status_code == 400 and "does not exist" in r.json()["error"], r.text
    (allowed / "link").symlink_to(write_adapter(allowed / "deep" / "a1"),
                                  target_is_directory=True)
    assert _load(app, "a1", f"{allowed}/deep/../link").status_code == 200
    assert app.engine.loaded == {"a1": str((allowed / "deep" / "a1").resolve())}


def test_no_allowed_dirs_means_no_folder_loads(tmp_path: Path, allowed: Path) -> None:
    app = _app(tmp_path, None)  # an embedder that gave none: every path is outside
    r = _load(app, "a1", str(write_adapter(allowed / "a1")))
    assert r.status_code == 403 and r.json() == {"error": OUTSIDE_ALLOWED_DIRS}, r.text


# ---- vLLM's operator LoRA routes go through the same checks ----

def _vllm(app: Assembled, action: str, body: Any, headers: dict[str, str] = AS_OPERATOR) -> Any:
    return send(app, "POST", f"/openai/v1/{action}_lora_adapter", body, headers)


def test_vllms_lora_routes_are_the_repository_load_and_unload(tmp_path: Path,
                                                              allowed: Path) -> None:
    app = _app(tmp_path, allowed, enable_operator_routes=True, max_adapters=1)
    folder = str(write_adapter(allowed / "a1"))
    body = {"lora_name": "a1", "lora_path": folder}
    assert _vllm(app, "load", body, headers={}).status_code == 401
    r = _vllm(app, "load", body, headers=AS_CLIENT)
    assert r.status_code == 403, r.text
    assert "operator key" in r.json()["error"]["message"], r.text  # OpenAI's error shape
    r = _vllm(app, "load", body)
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'a1' added successfully."
    r = send(app, "POST", "/v2/models/a1/generate", {"text_input": "x y"}, AS_CLIENT)
    assert r.status_code == 200, r.text  # a served model like any other
    r = _vllm(app, "load", {"lora_name": "a2", "lora_path": str(write_adapter(allowed / "a2"))})
    assert r.status_code == 400 and "--max_adapters 1" in r.json()["error"]["message"], r.text
    r = _vllm(app, "unload", {"lora_name": "a1"})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'a1' removed successfully."
    assert app.engine.loaded == {}
    r = _vllm(app, "unload", {"lora_name": "a1"})
    assert r.status_code == 404, r.text


@pytest.mark.parametrize("body,status,words", [
    ({"lora_name": "p", "lora_path": "PICKLED"}, 400, "pickled weights"),
    ({"lora_name": "o", "lora_path": "OUTSIDE"}, 403, OUTSIDE_ALLOWED_DIRS),
    ({"lora_name": "smollm2", "lora_path": "GOOD"}, 403, "base model"),
    ({"lora_name": "bad name", "lora_path": "GOOD"}, 400, "not allowed"),
    ({"lora_name": "a1", "lora_path": "GOOD", "load_inplace": True}, 400, "load_inplace"),
    ({"lora_name": "a1"}, 400, "lora_path"),
    ({"lora_path": "GOOD"}, 400, "lora_name"),
    ({"lora_name": 3, "lora_path": "GOOD"}, 400, "lora_name"),
    ([1], 400, "JSON object"),
])
def test_vllms_load_route_refuses_what_the_repository_refuses(
        tmp_path: Path, allowed: Path, body: Any, status: int, words: str) -> None:
    app = _app(tmp_path, allowed, enable_operator_routes=True)
    good = write_adapter(allowed / "good")
    pickled = write_adapter(allowed / "pickled")
    (pickled / "adapter_model.safetensors").unlink()
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    paths = {"GOOD": str(good), "PICKLED": str(pickled),
             "OUTSIDE": str(write_adapter(tmp_path / "outside"))}
    if isinstance(body, dict) and body.get("lora_path") in paths:
        body = {**body, "lora_path": paths[body["lora_path"]]}
    r = _vllm(app, "load", body)
    assert r.status_code == status and words in r.json()["error"]["message"], r.text
    assert app.engine.loaded == {}


def test_vllms_lora_routes_are_not_served_without_operator_routes(
        tmp_path: Path, allowed: Path) -> None:
    app = _app(tmp_path, allowed)
    r = _vllm(app, "load", {"lora_name": "a1", "lora_path": str(write_adapter(allowed / "a1"))})
    assert r.status_code == 404 and app.engine.loaded == {}, r.text


# ---- gRPC RepositoryModelLoad / Unload ----

async def _grpc_calls(app: Assembled, calls: list[tuple[str, bytes, str | None]]) -> list[Any]:
    """Each (rpc, wire request, key) through the runtime's servicer and interceptor; the
    status code of each (OK or the error's)."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

    from runtime.protocol.grpc_server import PipelineInterceptor, RuntimeServicer

    servicer = RuntimeServicer(types.SimpleNamespace(), app.repository)
    server = aio.server(interceptors=(PipelineInterceptor(app.pipeline),))
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    out = []
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for rpc, wire, key in calls:
                method = channel.unary_unary(f"/inference.GRPCInferenceService/{rpc}",
                                             request_serializer=lambda b: b,
                                             response_deserializer=lambda b: b)
                metadata = (("authorization", f"Bearer {key}"),) if key else None
                try:
                    await method(wire, metadata=metadata, timeout=10)
                    out.append(grpc.StatusCode.OK)
                except aio.AioRpcError as exc:
                    out.append(exc.code())
    finally:
        await server.stop(None)
    return out


def _load_wire(name: str, path: str) -> bytes:
    value = triton.field(3, path.encode())  # ModelRepositoryParameter.string_param
    entry = triton.field(1, b"lora_path") + triton.field(2, value)
    return triton.field(2, name.encode()) + triton.field(3, entry)


def test_grpc_repository_calls_need_the_operator_key(tmp_path: Path, allowed: Path) -> None:
    app = _app(tmp_path, allowed)
    load = _load_wire("a1", str(write_adapter(allowed / "a1")))
    unload = triton.field(2, b"a1")
    outside = _load_wire("a2", str(write_adapter(tmp_path / "outside")))
    codes = asyncio.run(_grpc_calls(app, [
        ("RepositoryModelLoad", load, None), ("RepositoryModelLoad", load, INFERENCE),
        ("RepositoryModelLoad", outside, OPERATOR), ("RepositoryModelLoad", load, OPERATOR),
        ("RepositoryModelUnload", unload, INFERENCE), ("RepositoryModelUnload", unload, None),
        ("RepositoryModelUnload", unload, OPERATOR)]))
    assert codes == [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                     grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK,
                     grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                     grpc.StatusCode.OK]
    assert app.engine.loaded == {}


def test_the_loaded_state_is_consistent(tmp_path: Path, allowed: Path) -> None:
    """After a refused load nothing is half-registered: the name can be loaded properly."""
    app = _app(tmp_path, allowed)
    assert _load(app, "a1", str(tmp_path)).status_code == 403
    assert _load(app, "a1", str(write_adapter(allowed / "a1"))).status_code == 200
    index = send(app, "POST", "/v2/repository/index", {}, AS_CLIENT).json()
    assert [m["name"] for m in index].count("a1") == 1
