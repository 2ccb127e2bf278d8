"""Unit tier: ``python -m runtime serve``'s command line (runtime.serve_cli) as KServe's
LLMInferenceService template writes it, and the routes that differ in that mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime import routes, serve_cli
from runtime.routes import Kind
from runtime.settings import EngineArgsError
from tests.runtime.test_pipeline import send
from tests.support.app import assemble

TEMPLATE = [  # config-llm-template.yaml's `exec vllm serve ...` with TLS on, after `serve`
    "/mnt/models", "--served-model-name", "smollm2", "publishers/ns/models/smollm2",
    "--port", "8000", "--disable-access-log-for-endpoints", "/health,/metrics,/ping",
    "--shutdown-timeout", "15", "--enable-ssl-refresh",
    "--ssl-certfile", "/var/run/kserve/tls/tls.crt", "--ssl-keyfile", "/var/run/kserve/tls/tls.key",
    "--max-model-len=2048",  # $VLLM_ADDITIONAL_ARGS
    "--enable-lora", "--max-lora-rank=8", "--max-loras=2",  # the controller's, after `--`
    "--lora-modules", json.dumps({"name": "a1", "path": "/mnt/lora/a1"}),
]


def test_the_template_command_becomes_the_runtimes_settings(tmp_path: Path) -> None:
    s = serve_cli.parse([str(tmp_path), *TEMPLATE[1:]])
    assert (s.model_name, s.served_model_aliases) == ("smollm2", ["publishers/ns/models/smollm2"])
    assert (s.model_dir, s.http_port, s.enable_grpc) == (str(tmp_path), 8000, False)
    assert (s.ssl_certfile, s.ssl_keyfile) == ("/var/run/kserve/tls/tls.crt",
                                               "/var/run/kserve/tls/tls.key")
    assert s.enable_ssl_refresh and s.vllm_serve and s.drain_timeout == 15
    assert s.engine_argv == ["--max-model-len=2048", "--enable-lora", "--max-lora-rank=8",
                             "--max-loras=2", "--lora-modules", TEMPLATE[-1]]


def test_host_and_access_log_switches_are_accepted_without_effect(tmp_path: Path) -> None:
    """vllm serve's --host with a wildcard address (both spellings) and its access-log
    switches are accepted and change nothing: the same settings as without them, nothing left
    for the engine."""
    plain = serve_cli.parse([str(tmp_path), "--port", "8001"])
    for extra in (["--host", "0.0.0.0"], ["--host=::"], ["--disable-uvicorn-access-log"],
                  ["--disable-access-log-for-endpoints", "/health"]):
        s = serve_cli.parse([str(tmp_path), "--port", "8001", *extra])
        assert s == plain, extra
        assert s.engine_argv == [], extra


@pytest.mark.parametrize("extra", [["--host", "127.0.0.1"], ["--host=10.0.0.5"],
                                   ["--uds", "/tmp/vllm.sock"], ["--ssl-ca-certs", "/ca.pem"],
                                   ["--ssl-cert-reqs=2"]])
def test_security_flags_it_cannot_honour_refuse_to_start(tmp_path: Path,
                                                         extra: list[str]) -> None:
    """A flag asking for less exposure (a loopback or single address, a Unix socket, client
    certificates) is refused with a clear error, never silently ignored (issue 24 item 6)."""
    with pytest.raises(EngineArgsError) as err:
        serve_cli.parse([str(tmp_path), *extra])
    assert extra[0].split("=")[0] in str(err.value)


def test_vllm_api_key_is_read_as_vllm_serve_does(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_KEY", raising=False)
    monkeypatch.setenv("VLLM_API_KEY", "from-env")
    s = serve_cli.parse([str(tmp_path)])
    assert s.api_key is not None and s.api_key.get_secret_value() == "from-env"
    s = serve_cli.parse([str(tmp_path), "--api-key", "flag"])  # the flag wins, as in vLLM
    assert s.api_key is not None and s.api_key.get_secret_value() == "flag"
    monkeypatch.setenv("VLLM_API_KEY", "")
    with pytest.raises(SystemExit) as exit_:  # an empty key fails closed
        serve_cli.parse([str(tmp_path)])
    assert exit_.value.code == 2


def test_vllm_serve_defaults(tmp_path: Path) -> None:
    s = serve_cli.parse([str(tmp_path), "--api-key", "k"])
    assert (s.model_name, s.http_port, s.enable_ssl_refresh) == (str(tmp_path), 8000, False)
    assert s.api_key is not None and s.api_key.get_secret_value() == "k"
    assert serve_cli.parse([str(tmp_path), "--grpc_port", "9001"]).enable_grpc


def test_v1_models_is_openais_list_only_in_serve_mode() -> None:
    assert routes.classify("/v1/models").protocol == routes.V1_REST
    assert routes.classify("/v1/models", vllm_serve=True) == routes.Route(
        Kind.METADATA, routes.OPENAI, endpoint="models")
    assert routes.classify("/health").kind is Kind.HEALTH


def test_health_tracks_readiness_without_a_key() -> None:
    from runtime.lifecycle import State

    app = assemble(api_key="k", vllm_serve=True)
    r = send(app, "GET", "/health")
    assert r.status_code == 200 and r.content == b""
    r = send(app, "GET", "/v1/models", headers={"authorization": "Bearer k"})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "smollm2"
    app.lifecycle.set(State.DRAINING, "test")
    r = send(app, "GET", "/health")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
