"""The predictor's settings, declared once and passed explicitly.

Why: kserve reads ``sys.argv`` at import time and uses it as constructor defaults (docs/platform-notes.md);
this runtime instead parses the command line once (``runtime.cli``) into this object and hands
it to every part that needs a setting.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from runtime.limits import Limits


class RuntimeSettings(BaseModel):
    """Everything the runtime itself (not the vLLM engine) is configured with."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(description="Name the model is served under (KServe's --model_name).")
    model_dir: str = Field(description="Folder holding the Hugging Face model (KServe's --model_dir).")
    http_port: int = 8080
    grpc_port: int = 8081
    enable_grpc: bool = True
    max_threads: int = 4
    enable_latency_logging: bool = False
    access_log_format: str | None = None
    event_loop: str = "auto"
    timeout_keep_alive: int = 65
    grace_period: int = 30
    max_request_bytes: int = Field(
        default=8 * 1024 * 1024, description="Bodies larger than this get 413 on every HTTP route."
    )
    health_check_interval: float = Field(
        default=1.0, description="Seconds between engine health checks (readiness/liveness)."
    )
    served_model_aliases: list[str] = Field(
        default_factory=list, description="Extra names from vLLM's --served-model-name."
    )
    engine_argv: list[str] = Field(
        default_factory=list, description="vLLM engine arguments, passed through unchanged."
    )
    api_key: SecretStr | None = Field(
        default=None, description="Bearer key required on every route but health (and metrics).")
    api_key_file: str | None = Field(
        default=None, description="File holding the key (a mounted Secret); re-read on change.")
    operator_key: SecretStr | None = Field(
        default=None, description="Bearer key of the operator role: repository load/unload "
                                  "and vLLM's operator routes; never the inference key.")
    operator_key_file: str | None = Field(
        default=None, description="File holding the operator key; re-read on change.")
    enable_operator_routes: bool = Field(
        default=False, description="Serve vLLM's operator routes (LoRA load/unload, sleep, "
                                   "scaling, profiling) under /openai; requires the operator "
                                   "key.")
    enable_adapter_loading: bool = Field(
        default=False, description="Allow loading and unloading LoRA adapters at run time "
                                   "through the model repository extension (needs vLLM's "
                                   "--enable-lora, the operator key and allowed folders).")
    allowed_adapter_dirs: list[str] = Field(
        default_factory=list, description="Folders adapters load from at run time: a "
                                          "lora_path must resolve (symlinks and '..' "
                                          "resolved) under one. None: no folder loads.")
    max_adapters: int = Field(
        default=32, ge=0, description="Most LoRA adapters served at once (static and loaded).")
    protect_metrics: bool = False
    max_waiting_requests: int | None = Field(
        default=None, description="Engine requests allowed to wait beyond the running batch; "
                                  "past it, 429 / RESOURCE_EXHAUSTED. None: unbounded.")
    drain_timeout: float = Field(
        default=25.0, description="On SIGTERM, seconds to let in-flight requests finish.")
    limits: Limits = Field(default_factory=Limits)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    enable_ssl_refresh: bool = Field(
        default=False, description="Reload the certificate and key when their files change "
                                   "(for new connections; as vLLM's --enable-ssl-refresh).")
    vllm_serve: bool = Field(
        default=False, description="Started as `python -m runtime serve` (the `vllm serve` "
                                   "contract): /v1/models is OpenAI's list, /health is vLLM's.")
