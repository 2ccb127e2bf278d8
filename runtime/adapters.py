"""LoRA adapters as served models: which are loaded, and whether a folder may be loaded.

Why the runtime checks a folder before the engine sees it: vLLM loads an adapter inside its
engine process; a folder that is not an adapter, a rank above ``--max-lora-rank`` or weights
shaped for another base model come back as a 500 with an engine-internal message, or fail only
at the first request that uses the adapter. Checked here, from the files alone (peft's
``adapter_config.json`` and the safetensors headers of adapter and base model, no tensors
read), each mistake is a 4xx that says which, and the engine never sees the folder.

Only safetensors adapters load at run time: a pickled ``adapter_model.bin`` runs code when it is
read, which an API call must not be able to cause.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ClientError, ForbiddenError, ModelNotFoundError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
# Model names appear in URL paths and metric labels: keep them to a safe, bounded alphabet.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_HEADER = 64 * 1024 * 1024  # a safetensors header larger than this is not one


class AdapterError(ClientError):
    """A load or unload request that cannot be honoured; the message says why."""


class AdapterConflictError(AdapterError):
    """The name is already taken (409)."""

    http_status = 409
    grpc_code = "ALREADY_EXISTS"


@dataclass(frozen=True)
class Adapter:
    """A loaded adapter: its served name, folder and rank (None: not read, e.g. static)."""

    name: str
    path: str
    rank: int | None = None


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from a safetensors file's header (8-byte length + JSON)."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise AdapterError(f"{path.name} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", head)
        if size > _MAX_HEADER:
            raise AdapterError(f"{path.name} is not a safetensors file (header of {size} bytes)")
        try:
            header = json.loads(f.read(size))
        except ValueError:
            raise AdapterError(f"{path.name} is not a safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{path.name} is not a safetensors file (bad header)")
    return {k: list(v.get("shape", [])) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict)}


def base_shapes(base_dir: str | Path) -> dict[str, list[int]]:
    """Every weight shape of the base model (all its safetensors files, sharded or not)."""
    shapes: dict[str, list[int]] = {}
    for file in sorted(Path(base_dir).glob("*.safetensors")):
        shapes |= safetensors_shapes(file)
    return shapes


def _base_key(lora_key: str) -> tuple[str, str] | None:
    """``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` ->
    (``model.layers.0.self_attn.q_proj.weight``, ``A``)."""
    match = re.match(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", lora_key)
    if match is None:
        return None
    return match.group(1) + ".weight", match.group(2)


def check_folder(path: str, *, base: dict[str, list[int]], max_rank: int) -> int:
    """Check that ``path`` holds a LoRA adapter (peft format, safetensors) of rank at most
    ``max_rank`` whose weights fit the base model's shapes; return its rank."""
    folder = Path(path)
    if not folder.is_dir():
        raise AdapterError(f"adapter folder {path} does not exist")
    config_file = folder / CONFIG
    if not config_file.is_file():
        raise AdapterError(f"{path} is not a LoRA adapter: it has no {CONFIG}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path}/{CONFIG} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise AdapterError(f"{path} is not a LoRA adapter (peft_type {kind!r})")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterError(f"{path}/{CONFIG} has no valid rank 'r' (got {rank!r})")
    ranks = [rank, *(v for v in (config.get("rank_pattern") or {}).values() if isinstance(v, int))]
    if max(ranks) > max_rank:
        raise AdapterError(f"adapter {path} has rank {max(ranks)}, above this server's "
                           f"--max-lora-rank {max_rank}")
    weights = folder / WEIGHTS
    if not weights.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise AdapterError(f"{path} holds pickled weights (adapter_model.bin); only "
                               f"{WEIGHTS} is loaded at run time")
        raise AdapterError(f"{path} is not a LoRA adapter: it has no {WEIGHTS}")
    shapes = safetensors_shapes(weights)
    checked = 0
    for key, shape in shapes.items():
        mapped = _base_key(key)
        if mapped is None:
            continue
        base_key, side = mapped
        target = base.get(base_key)
        if target is None:
            raise AdapterError(
                f"adapter {path} does not fit this base model: it adapts "
                f"{base_key.removesuffix('.weight')}, which the base model does not have")
        out_features, in_features = (target + [0, 0])[:2]
        fits = (len(shape) == 2 and (shape[1] == in_features if side == "A"
                                      else shape[0] == out_features))
        if not fits:
            raise AdapterError(
                f"adapter {path} does not fit this base model: {key} has shape {shape}, the "
                f"base weight {base_key} has shape {target} (built for another base model?)")
        checked += 1
    if not checked:
        raise AdapterError(f"{path}/{WEIGHTS} holds no LoRA weights (lora_A / lora_B)")
    return rank


class AdapterSet:
    """The adapters served now: names the pipeline resolves and uses as metric labels.

    Bounded by ``max_adapters`` so that neither stored state nor label values grow without
    limit; the base model's names can never be taken or removed.
    """

    def __init__(self, base_names: list[str], max_adapters: int) -> None:
        self.base_names = frozenset(base_names)
        self.max_adapters = max_adapters
        self._adapters: dict[str, Adapter] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    def __len__(self) -> int:
        return len(self._adapters)

    def get(self, name: str) -> Adapter | None:
        return self._adapters.get(name)

    def names(self) -> list[str]:
        return list(self._adapters)

    def check_new(self, name: str) -> None:
        """Raise unless ``name`` could be added now."""
        if not NAME.match(name):
            raise AdapterError(
                f"adapter name {name[:140]!r} is not allowed: 1-128 characters, letters, digits, "
                "'.', '_' or '-', starting with a letter or digit")
        if name in self.base_names:
            raise ForbiddenError(f"{name} is the base model's name; it cannot be loaded or "
                                 "unloaded (this runtime serves one base model for the life of "
                                 "the process)")
        if name in self._adapters:
            raise AdapterConflictError(f"adapter {name} is already loaded (from "
                                       f"{self._adapters[name].path}); unload it first")
        if len(self._adapters) >= self.max_adapters:
            raise AdapterError(f"{len(self._adapters)} adapters are loaded, the most this server "
                               f"allows (--max_adapters {self.max_adapters}); unload one first")

    def add(self, adapter: Adapter) -> None:
        self._adapters[adapter.name] = adapter

    def check_removable(self, name: str) -> Adapter:
        """The adapter ``name``; raise for the base model or an unknown name."""
        if name in self.base_names:
            raise ForbiddenError(f"{name} is the base model; it cannot be unloaded")
        adapter = self._adapters.get(name)
        if adapter is None:
            raise ModelNotFoundError(name)
        return adapter

    def remove(self, name: str) -> None:
        self._adapters.pop(name, None)
