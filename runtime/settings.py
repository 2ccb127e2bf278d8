"""The predictor's settings, declared once and passed explicitly.

Why: kserve reads ``sys.argv`` at import time and uses it as constructor defaults (docs/platform-notes.md);
this runtime instead parses the command line once (``runtime.cli``) into this object and hands
it to every part that needs a setting.

These models are the one source of every setting's name, type, default and help: the command
line (``runtime.cli``) is built from their fields, a flag per field (``--NAME``; the ``limits``
fields are flags too). A field's ``json_schema_extra`` says how its flag differs from that:
``cli: False`` (no flag), ``flag`` (another name), ``optional_value`` (the flag alone means
true), ``metavar``, ``env`` (the environment variable read when neither the flag nor its
``_file`` flag is given).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic.config import JsonDict

from runtime.limits import Limits

NOT_A_FLAG: JsonDict = {"cli": False}


class EngineArgsError(ValueError):
    """Engine arguments the runtime refuses at start-up (bfloat16 with eager mode on a CPU,
    adapter loading without vLLM's --enable-lora); ``python -m runtime`` prints it as one line
    and exits with 2."""


class RuntimeSettings(BaseModel):
    """Everything the runtime itself (not the vLLM engine) is configured with."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(
        default="model", description="served model name (KServe); becomes vLLM's "
                                     "--served-model-name")
    model_dir: str = Field(default="/mnt/models", description="model folder (KServe)")
    http_port: int = Field(default=8080, description="HTTP port (KServe)")
    grpc_port: int = Field(default=8081, description="gRPC port (KServe)")
    enable_grpc: bool = Field(default=True, description="serve gRPC v2 (KServe)")
    max_threads: int = Field(default=4, description="gRPC threads (KServe)")
    enable_latency_logging: bool = Field(
        default=False, description="a log line per v2 request with latencies (KServe)")
    access_log_format: str | None = Field(
        default=None, description="access log format (KServe; default uvicorn's)")
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        default="auto", description="asyncio event loop: auto is uvloop when installed")
    timeout_keep_alive: int = Field(
        default=65, description="seconds an idle keep-alive connection stays open (KServe)")
    grace_period: int = Field(default=30, json_schema_extra=NOT_A_FLAG)
    max_request_bytes: int = Field(
        default=8 * 1024 * 1024, description="largest accepted HTTP body; larger gets 413 on "
                                             "every HTTP route")
    health_check_interval: float = Field(
        default=1.0, description="seconds between engine health checks (readiness, liveness)")
    served_model_aliases: list[str] = Field(
        default_factory=list, description="Extra names from vLLM's --served-model-name.",
        json_schema_extra=NOT_A_FLAG)
    engine_argv: list[str] = Field(
        default_factory=list, description="vLLM engine arguments, passed through unchanged.",
        json_schema_extra=NOT_A_FLAG)
    api_key: SecretStr | None = Field(
        default=None, json_schema_extra={"env": "API_KEY"},
        description="require 'Authorization: Bearer KEY' on every route but health and "
                    "metrics (gRPC: 'authorization' metadata, every RPC but the health "
                    "ones). vLLM's --api-key is this flag.")
    api_key_file: str | None = Field(
        default=None, description="read the key from this file (a mounted Kubernetes "
                                  "Secret); a changed file takes effect without a restart")
    operator_key: SecretStr | None = Field(
        default=None, json_schema_extra={"env": "OPERATOR_API_KEY"},
        description="the operator's key: repository load/unload (REST and gRPC) and the "
                    "operator routes need it, and only it (the inference key gets 403 "
                    "there); it must differ from --api_key.")
    operator_key_file: str | None = Field(
        default=None, description="read the operator key from this file (a mounted Secret); "
                                  "a changed file takes effect without a restart")
    enable_operator_routes: bool = Field(
        default=False, description="serve vLLM's operator routes under /openai (LoRA "
                                   "load/unload, sleep/wake, elastic scaling, profiling); "
                                   "requires the operator key")
    enable_adapter_loading: bool = Field(
        default=False, description="load and unload LoRA adapters at run time through the "
                                   "model repository extension (needs vLLM's --enable-lora, "
                                   "the operator key and --allowed_adapter_dirs)")
    allowed_adapter_dirs: list[str] = Field(
        default_factory=list, json_schema_extra={"metavar": "DIR[,DIR]"},
        description="folders adapters may be loaded from at run time (comma-separated, or "
                    "the flag repeated): a lora_path must resolve, symlinks and '..' "
                    "resolved, under one of them; default none, so nothing loads")
    max_adapters: int = Field(
        default=32, ge=0, description="most LoRA adapters served at once, static and loaded")
    protect_metrics: bool = Field(
        default=False, description="require the API key on /metrics too")
    max_waiting_requests: int | None = Field(
        default=512, description="engine requests allowed to wait beyond the running batch "
                                 "(admitted ones on their way to the engine included); past "
                                 "it 429 / RESOURCE_EXHAUSTED with Retry-After")
    max_concurrent_rpcs: int = Field(
        default=1024, ge=1, description="gRPC RPCs served at once (streams included); beyond "
                                        "it gRPC refuses with RESOURCE_EXHAUSTED")
    max_connections: int = Field(
        default=2048, ge=1, description="HTTP connections (and requests in progress) at once; "
                                        "beyond it a new request gets 503 Service Unavailable "
                                        "(uvicorn's limit_concurrency)")
    max_stream_requests: int = Field(
        default=128, ge=1, description="requests in flight at once on one ModelStreamInfer "
                                       "stream; beyond it a request gets an in-stream error "
                                       "(429-like) and the stream stays open")
    drain_timeout: float = Field(
        default=25.0, description="on SIGTERM: readiness turns false, new requests get 503, "
                                  "in-flight requests get this many seconds to finish (fits "
                                  "Kubernetes' 30 s grace)")
    limits: Limits = Field(default_factory=Limits)
    ssl_certfile: str | None = Field(default=None, description="TLS certificate (KServe)")
    ssl_keyfile: str | None = Field(default=None, description="TLS key (KServe)")
    enable_ssl_refresh: bool = Field(
        default=False, json_schema_extra={"optional_value": True},
        description="reload the certificate and key when their files change (vLLM's "
                    "--enable-ssl-refresh): new connections get the new certificate")
    otlp_traces_endpoint: str | None = Field(
        default=None, json_schema_extra=NOT_A_FLAG,
        description="vLLM's --otlp-traces-endpoint (an engine argument, passed to vLLM "
                    "unchanged), read by the runtime too: a server span per inference "
                    "request, exported there, with vLLM's llm_request span as its child.")
    vllm_serve: bool = Field(
        default=False, json_schema_extra=NOT_A_FLAG,
        description="Started as `python -m runtime serve` (the `vllm serve` contract): "
                    "/v1/models is OpenAI's list, /health is vLLM's.")
