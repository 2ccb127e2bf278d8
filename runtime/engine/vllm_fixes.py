"""Fixes for vLLM bugs that change answers, installed in every vLLM process as a plugin.

Why a plugin: the model runs in vLLM's engine process, not in the server's; vLLM loads the
``vllm.general_plugins`` entry points (pyproject.toml) in every process it starts, so the fix
is in place wherever the model runs, for ``python -m runtime`` and for plain vLLM in the same
environment alike (the benchmarks compare like with like).

**LoRA on CPU applied an adapter to base-model requests (vLLM 0.32).** In a batch that mixes
requests for LoRA adapters with requests for the base model, the CPU build's LoRA kernels
(``vllm.lora.ops.torch_ops``) index the stacked adapter weights with each token's adapter
slot; a base-model token's slot is -1, which in PyTorch indexing is the *last* slot, so the
base-model request was computed with whichever adapter sat there (measured: the base model's
greedy answer came back as adapter ``mlp-b``'s, token for token). The GPU kernels skip slot -1.
Here the tokens of slot -1 get zero input to the adapter's matrices: their adapter delta is 0,
as on GPU. Requests for adapters, and batches without adapters, compute exactly as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_KERNELS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


def _skip_base_tokens(kernel: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(kernel)
    def masked(inputs: Any, weights: Any, output: Any, indices: Any, *args: Any,
               **kwargs: Any) -> Any:
        base = indices < 0
        if bool(base.any()):
            inputs = inputs.masked_fill(base.unsqueeze(-1), 0)
            indices = indices.clamp(min=0)
        return kernel(inputs, weights, output, indices, *args, **kwargs)

    masked.__runtime_fix__ = True  # type: ignore[attr-defined]
    return masked


def install() -> None:
    """Patch the CPU LoRA kernels where vLLM looks them up (idempotent)."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for name in _KERNELS:
        original = getattr(lora_ops, name)
        if getattr(original, "__runtime_fix__", False):
            continue
        fixed = _skip_base_tokens(original)
        setattr(lora_ops, name, fixed)  # the sgmv_* kernels call these by module name
        if hasattr(punica_cpu, name):
            setattr(punica_cpu, name, fixed)
