"""Unit tier: the CPU LoRA kernel fix (runtime.engine.vllm_fixes) on tensors built here, and
its registration as a vLLM plugin. The end-to-end proof (a base-model request batched with
adapter requests answers as the base model) is in test_adapters.py."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

import torch

from runtime.engine import vllm_fixes


def test_tokens_of_no_adapter_get_no_adapter_delta() -> None:
    vllm_fixes.install()
    ops = importlib.import_module("vllm.lora.ops.torch_ops.lora_ops")
    weights = torch.stack([torch.full((1, 3, 2), 1.0), torch.full((1, 3, 2), 5.0)])  # 2 slots
    inputs = torch.ones(3, 2)
    indices = torch.tensor([0, -1, 1])  # token 1 belongs to the base model
    out = torch.zeros(3, 3)
    ops.bgmv_shrink(inputs, weights, out, indices, 1.0)
    assert out.tolist() == [[2.0] * 3, [0.0] * 3, [10.0] * 3]
    out = torch.full((3, 3), 7.0)
    ops.bgmv_expand(inputs, weights, out, indices, True)
    assert out.tolist() == [[9.0] * 3, [7.0] * 3, [17.0] * 3]
    out = torch.zeros(3, 4)
    ops.bgmv_expand_slice(inputs, weights, out, indices, 1, 3, False)
    assert out[1].tolist() == [0.0] * 4 and out[2, 1:].tolist() == [10.0] * 3
    punica = importlib.import_module("vllm.lora.punica_wrapper.punica_cpu")
    assert punica.bgmv_shrink is ops.bgmv_shrink  # where the CPU wrapper looks them up


def test_the_fix_is_registered_as_a_vllm_plugin() -> None:
    names = {e.value for e in entry_points(group="vllm.general_plugins")}
    assert "runtime.engine.vllm_fixes:install" in names, (
        "the vLLM plugin is not registered (reinstall the package: `make install`)")
