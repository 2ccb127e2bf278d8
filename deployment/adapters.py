"""Deterministic LoRA adapters for a base model, built with peft: for tests, examples, benchmarks.

Why build them: there is no published LoRA adapter of SmolLM2-135M to download on a machine
without network access, and a test needs adapters whose output is known to differ from the
base model's. peft's random initialisation (``init_lora_weights=False``) under a fixed seed
gives such adapters; ``lora_B`` is scaled down so the output stays language rather than noise.
``python -m deployment adapters`` writes them next to the model for the examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter: its name, seed, rank and target modules."""

    name: str
    seed: int
    rank: int = 8
    targets: tuple[str, ...] = ATTENTION
    scale: float = 0.5  # applied to lora_B after the random initialisation


# The example adapters (deployment examples, benchmarks and tests use these names).
EXAMPLES = (
    AdapterSpec("attn-a", seed=1),
    AdapterSpec("mlp-b", seed=2, targets=MLP),
    AdapterSpec("attn-c", seed=3),
    AdapterSpec("mlp-d", seed=4, targets=MLP),
)


def build_adapter(base_dir: str | Path, out_dir: str | Path, spec: AdapterSpec) -> Path:
    """Write ``spec``'s adapter of the model in ``base_dir`` to ``out_dir`` (peft's format:
    ``adapter_config.json`` + ``adapter_model.safetensors``); the same spec gives the same
    weights. Returns ``out_dir``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(r=spec.rank, lora_alpha=2 * spec.rank, target_modules=list(spec.targets),
                        init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(spec.scale)
    peft_model.save_pretrained(str(out))
    return out


def build_examples(base_dir: str | Path, root: str | Path,
                   specs: tuple[AdapterSpec, ...] = EXAMPLES) -> dict[str, Path]:
    """Every example adapter under ``root/<name>`` (kept when already built)."""
    built = {}
    for spec in specs:
        target = Path(root) / spec.name
        if not (target / "adapter_config.json").is_file():
            build_adapter(base_dir, target, spec)
        built[spec.name] = target
    return built
