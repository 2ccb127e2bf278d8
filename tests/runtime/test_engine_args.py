"""Engine parity: ``python -m runtime`` builds the engine plain vLLM builds from the same
arguments (issue 14), the CPU defaults being the one documented difference.

Both engine configurations are resolved without starting an engine: the runtime's through
``runtime.cli.parse`` -> ``parse_engine_args``, plain vLLM's through its own serve parser on the
same argv (plus ``--model DIR --served-model-name smollm2``, what the runtime adds, and
``--shutdown-timeout`` the runtime's ``--drain_timeout``, vLLM's name for the same drain), then
``AsyncEngineArgs.from_cli_args(ns).create_engine_config()`` for both.
"""

from __future__ import annotations

import math
import re
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.platforms import current_platform
from vllm.utils.argparse_utils import FlexibleArgumentParser

from runtime import cli
from runtime.engine.vllm_args import parse_engine_args
from runtime.settings import EngineArgsError, RuntimeSettings
from tests.support.server import DEFAULT_MODEL_DIR, start_runtime

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL_DIR.is_dir(),
                                reason="model folder missing (make model)")

MODEL = str(DEFAULT_MODEL_DIR)
CPU = current_platform.is_cpu()


@pytest.fixture(autouse=True)
def _engine_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``engine_env()`` gives a server process: no hub, a small CPU KV cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    monkeypatch.setenv("VLLM_NO_USAGE_STATS", "1")


def runtime_args(engine_argv: list[str]) -> Namespace:
    settings = cli.parse([f"--model_dir={MODEL}", "--model_name=smollm2", *engine_argv])
    return parse_engine_args(settings)


# `vllm serve --shutdown-timeout N` drains for N seconds, the runtime's --drain_timeout.
DRAIN = str(math.ceil(RuntimeSettings.model_fields["drain_timeout"].default))


def vllm_args(engine_argv: list[str]) -> Namespace:
    parser = make_arg_parser(FlexibleArgumentParser())
    return parser.parse_args(["--shutdown-timeout", DRAIN, *engine_argv, "--model", MODEL,
                              "--served-model-name", "smollm2"])


def engine(ns: Namespace) -> dict[str, Any]:
    """The fields of the resolved engine configuration that define the engine."""
    c = AsyncEngineArgs.from_cli_args(ns).create_engine_config()
    m, cc, sc = c.model_config, c.compilation_config, c.scheduler_config
    return {
        "model": m.model,
        "served_model_name": m.served_model_name,
        "dtype": str(m.dtype),
        "enforce_eager": m.enforce_eager,
        "compilation_mode": getattr(cc.mode, "name", str(cc.mode)),
        "cudagraph_mode": str(cc.cudagraph_mode),
        "max_model_len": m.max_model_len,
        "quantization": m.quantization,
        "seed": m.seed,
        "runner_type": m.runner_type,
        "enable_prefix_caching": c.cache_config.enable_prefix_caching,
        "block_size": c.cache_config.block_size,
        "cache_dtype": str(c.cache_config.cache_dtype),
        "kv_cache_memory_bytes": c.cache_config.kv_cache_memory_bytes,
        "max_num_seqs": sc.max_num_seqs,
        "max_num_batched_tokens": sc.max_num_batched_tokens,
        "chunked_prefill": sc.enable_chunked_prefill,
        "async_scheduling": sc.async_scheduling,
        "tensor_parallel_size": c.parallel_config.tensor_parallel_size,
        "pipeline_parallel_size": c.parallel_config.pipeline_parallel_size,
        "device": str(c.device_config.device),
        "speculative": c.speculative_config is not None,
        "lora": c.lora_config is not None,
    }


# Argument lists where the runtime and plain vLLM must build the same engine.
SAME = [
    ["--dtype", "float32"],
    ["--dtype", "bfloat16"],
    ["--dtype=bfloat16"],
    ["--dtype", "auto"],
    ["--no-enforce-eager"],
    ["--no_enforce_eager"],
    ["--dtype", "float32", "--enforce-eager"],
    ["--dtype", "float32", "--no-enforce-eager"],
    ["--dtype", "bfloat16", "--no-enforce-eager"],
    ["--dtype", "float32", "--max-model-len", "1024"],
    ["--dtype", "bfloat16", "--max-model-len", "1024"],
    ["--dtype", "float32", "--no-enable-prefix-caching"],
    ["--dtype", "bfloat16", "--no-enable-prefix-caching", "--max-model-len=1024"],
]


@pytest.mark.parametrize("argv", SAME, ids=" ".join)
def test_same_engine_as_plain_vllm(argv: list[str]) -> None:
    ours, theirs = runtime_args(argv), vllm_args(argv)
    assert engine(ours) == engine(theirs)
    assert vars(ours) == vars(theirs)  # and every other argument too, down to the namespace


# Argument lists that give neither --dtype nor an eager flag: on a CPU the runtime's defaults.
DEFAULTED = [
    [],
    ["--max-model-len", "1024"],
    ["--no-enable-prefix-caching"],
]


@pytest.mark.parametrize("argv", DEFAULTED, ids=lambda a: " ".join(a) or "defaults")
def test_cpu_defaults_are_the_only_difference(argv: list[str]) -> None:
    ours, theirs = engine(runtime_args(argv)), engine(vllm_args(argv))
    if not CPU:
        assert ours == theirs
        return
    diff = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    # Plain vLLM: --dtype auto (bfloat16 for SmolLM2, measured) compiled; runtime: float32 eager.
    assert diff.keys() <= {"dtype", "enforce_eager", "compilation_mode", "cudagraph_mode"}
    assert ours["dtype"] == "torch.float32" and ours["enforce_eager"] is True
    assert theirs["enforce_eager"] is False
    # Exactly the engine vLLM builds from the same arguments plus --dtype float32 --enforce-eager.
    cpu_defaults = [*argv, "--dtype", "float32", "--enforce-eager"]
    assert ours == engine(vllm_args(cpu_defaults))
    assert vars(runtime_args(argv)) == vars(vllm_args(cpu_defaults))


def test_auto_dtype_resolves_to_bfloat16_on_this_cpu() -> None:
    """The measured fact the refusal of ``auto`` + eager rests on (vLLM 0.32, x86 CPU):
    SmolLM2's config says bfloat16 and vLLM keeps it."""
    if not CPU:
        pytest.skip("CPU platform only")
    assert engine(vllm_args([]))["dtype"] == "torch.bfloat16"


# bfloat16 (asked for, or resolved from --dtype auto) with eager mode: refused on a CPU.
REFUSED = [
    ["--dtype", "bfloat16", "--enforce-eager"],
    ["--dtype=bfloat16", "--enforce_eager"],
    ["--enforce-eager"],
    ["--dtype", "auto", "--enforce-eager"],
]


@pytest.mark.parametrize("argv", REFUSED, ids=" ".join)
def test_bfloat16_eager_refused_on_cpu(argv: list[str]) -> None:
    if not CPU:
        assert engine(runtime_args(argv)) == engine(vllm_args(argv))
        return
    with pytest.raises(EngineArgsError) as refused:
        runtime_args(argv)
    message = str(refused.value)
    assert "bfloat16" in message and "--enforce-eager" in message, message
    assert "use --dtype float32, or drop --enforce-eager" in message, message
    assert "\n" not in message


def test_flags_from_a_config_file_count_as_given(tmp_path: Path) -> None:
    """vLLM's ``--config FILE`` sets engine arguments too: the runtime sees them as given."""
    config = tmp_path / "engine.yaml"
    config.write_text("dtype: bfloat16\nmax-model-len: 1024\n")
    argv = ["--config", str(config)]
    ours, theirs = runtime_args(argv), vllm_args(argv)
    assert (ours.dtype, ours.enforce_eager, ours.max_model_len) == ("bfloat16", False, 1024)
    assert vars(ours) == vars(theirs)


def test_the_engine_drains_as_long_as_the_runtime() -> None:
    """A signal to the process group reaches the engine-core process too: with vLLM's default
    --shutdown-timeout 0 it would abort the requests the runtime's drain waits for. So the
    engine's drain is the runtime's, unless --shutdown-timeout is given as an engine flag."""
    settings = cli.parse([f"--model_dir={MODEL}", "--model_name=smollm2", "--drain_timeout=7.5"])
    assert parse_engine_args(settings).shutdown_timeout == 8
    assert runtime_args([]).shutdown_timeout == int(DRAIN)
    assert runtime_args(["--shutdown-timeout", "3"]).shutdown_timeout == 3
    engine_config = AsyncEngineArgs.from_cli_args(runtime_args([])).create_engine_config()
    assert engine_config.shutdown_timeout == int(DRAIN)


def test_cpu_defaults_kept_with_other_engine_flags() -> None:
    ns = runtime_args(["--max-num-seqs", "8"])
    if CPU:
        assert (ns.dtype, ns.enforce_eager) == ("float32", True)
    assert ns.max_num_seqs == 8


@pytest.mark.slow
def test_refusal_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    """The real process: ``--dtype bfloat16 --enforce-eager`` exits at once with one line."""
    if not CPU:
        pytest.skip("CPU platform only")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as failed:
        start_runtime(extra=["--dtype", "bfloat16", "--enforce-eager"])
    assert time.monotonic() - t0 < 120  # before any engine is built
    message = str(failed.value)
    assert "exited with 2 during start-up" in message, message
    log_path = re.search(r"log: (\S+)$", message)
    assert log_path is not None, message
    log = Path(log_path.group(1)).read_text()
    errors = [ln for ln in log.splitlines() if ln.startswith("python -m runtime: error:")]
    assert errors == ["python -m runtime: error: --dtype bfloat16 with --enforce-eager gives "
                      "wrong output on CPUs: use --dtype float32, or drop --enforce-eager "
                      "(vLLM then compiles the model)"], log
    assert "Traceback" not in log, log
    capsys.readouterr()  # start_runtime printed the log's tail: expected here
