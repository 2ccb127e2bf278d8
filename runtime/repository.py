"""KServe's model repository extension over one base model and its LoRA adapters.

Why: an adapter is a model like any other to a KServe client (``/v2/models/{adapter}/infer``,
metadata, readiness, the repository index, gRPC ``model_name``), so each adapter is a KServe
model registered next to the base model, answered by the same engine. Loading and unloading
at run time go through the repository extension's own calls (REST
``/v2/repository/models/{m}/load|unload``, gRPC RepositoryModelLoad/Unload, and vLLM's
``/openai/v1/load_lora_adapter`` operator route), and only when the operator switched them on
(``--enable_adapter_loading``, behind the operator key): the base model can never be unloaded,
because unloading it would stop the engine for good.

Folders load only from under ``--allowed_adapter_dirs``, compared as real paths (symlinks and
``..`` resolved), with every file the engine reads from the folder resolving there too; any
other path gets one fixed 403 that does not say whether it exists, is a folder or is
readable, and the engine is handed the real path, never the client's spelling of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from kserve.model_repository import ModelRepository
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from runtime.adapters import Adapter, AdapterError, AdapterSet, base_shapes, check_folder
from runtime.engine.base import Engine
from runtime.errors import ForbiddenError
from runtime.metrics import forget_model, serve_model

logger = logging.getLogger(__name__)

LORA_PATH = "lora_path"
# The one answer for a path outside the allowed folders, whatever is (or is not) there.
OUTSIDE_ALLOWED_DIRS = ("lora_path is not inside a folder this server loads adapters from "
                        "(--allowed_adapter_dirs)")


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def allowed_folder(path: str, allowed_dirs: Sequence[str]) -> str:
    """The real path of ``path`` if it, and every entry in it, resolves under one of
    ``allowed_dirs`` (themselves resolved at each call, so a re-pointed mount is followed); else
    ``ForbiddenError(OUTSIDE_ALLOWED_DIRS)``. Nothing about the path is revealed: the same
    error whether it exists, is a file, is unreadable or is a symlink out."""
    if "\x00" in path:  # no such path can exist; realpath would raise
        raise ForbiddenError(OUTSIDE_ALLOWED_DIRS)
    real = os.path.realpath(path)
    roots = [os.path.realpath(d) for d in allowed_dirs]
    if not any(_inside(real, r) for r in roots):
        raise ForbiddenError(OUTSIDE_ALLOWED_DIRS)
    try:  # the engine reads files from the folder: none may lead out (a symlink)
        entries = [os.path.realpath(entry.path) for entry in os.scandir(real)]
    except OSError:  # missing, not a folder, unreadable: inside, so check_folder says which
        entries = []
    if any(not any(_inside(entry, r) for r in roots) for entry in entries):
        raise ForbiddenError(OUTSIDE_ALLOWED_DIRS)
    return real


def lora_path_of(parameters: Any) -> str:
    """The adapter folder a load request names: ``parameters.lora_path``, or (what
    tritonclient's ``load_model(config=...)`` sends) a JSON ``config`` holding ``lora_path``."""
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise AdapterError("'parameters' must be a JSON object")
    path = parameters.get(LORA_PATH)
    config = parameters.get("config")
    if path is None and config is not None:
        try:
            decoded = json.loads(config) if isinstance(config, str | bytes) else None
        except (ValueError, RecursionError):  # not JSON, or nested past the decoder's limit
            decoded = None
        if not isinstance(decoded, dict):
            raise AdapterError("parameter 'config' must be a JSON object string, e.g. "
                               '{"lora_path": "/mnt/adapters/a1"}')
        path = decoded.get(LORA_PATH)
    if path is None:
        raise AdapterError(f"a load names the adapter's folder: parameters {{'{LORA_PATH}': "
                           "'<folder>'}")
    if not isinstance(path, str) or not path:
        raise AdapterError(f"parameter '{LORA_PATH}' must be a non-empty string, got "
                           f"{type(path).__name__}")
    return path


class AdapterRepository(ModelRepositoryExtension):
    """The repository extension: index as KServe's; load and unload are LoRA adapters only."""

    def __init__(self, model_registry: ModelRepository, *, engine: Engine, adapters: AdapterSet,
                 make_model: Callable[[str], Any], base_dir: str,
                 enable_loading: bool, allowed_dirs: Sequence[str] = ()) -> None:
        super().__init__(model_registry=model_registry)
        self.engine = engine
        self.adapters = adapters
        self.make_model = make_model
        self.base_dir = base_dir
        self.enable_loading = enable_loading
        self.allowed_dirs = list(allowed_dirs)  # none: no folder loads
        self._lock = asyncio.Lock()
        self._base_shapes: dict[str, list[int]] | None = None

    def _refuse_unless_enabled(self, model_name: str) -> None:
        if model_name in self.adapters.base_names:
            raise ForbiddenError(
                f"model {model_name} cannot be loaded or unloaded through the repository "
                "extension: this runtime serves one base model for the life of the process")
        if not self.enable_loading:
            raise ForbiddenError(
                f"model {model_name} cannot be loaded or unloaded: loading LoRA adapters at "
                "run time is off (start the server with --enable_adapter_loading true and "
                "--allowed_adapter_dirs)")

    def register_static(self) -> None:
        """Serve the adapters the engine was started with (``--lora-modules``) as models."""
        for name, path in self.engine.static_adapters().items():
            self.adapters.add(Adapter(name, path))
            self._model_registry.update(self.make_model(name))
            logger.info("serving LoRA adapter %s from %s", name, path)

    async def load(self, model_name: str, parameters: Any = None) -> None:
        """Check the folder, load it into the engine, serve it under ``model_name``."""
        self._refuse_unless_enabled(model_name)
        self.adapters.check_new(model_name)
        path = await asyncio.to_thread(allowed_folder, lora_path_of(parameters),
                                       self.allowed_dirs)
        max_rank = self.engine.max_lora_rank
        if max_rank is None:  # refused at start-up; kept as a guard for embedders
            raise ForbiddenError("LoRA is not enabled in the engine (--enable-lora)")
        if self._base_shapes is None:
            self._base_shapes = await asyncio.to_thread(base_shapes, self.base_dir)
        rank = await asyncio.to_thread(check_folder, path, base=self._base_shapes,
                                       max_rank=max_rank)
        async with self._lock:
            self.adapters.check_new(model_name)  # another load may have won meanwhile
            await self.engine.load_adapter(model_name, path)
            self.adapters.add(Adapter(model_name, path, rank))
            self._model_registry.update(self.make_model(model_name))
            serve_model(model_name)
        logger.info("loaded LoRA adapter %s (rank %d) from %s", model_name, rank, path)

    async def unload(self, model_name: str) -> None:
        """Stop serving an adapter: new requests naming it get 404 on every protocol; requests
        already running on it finish (the engine keeps their adapter until they end)."""
        self._refuse_unless_enabled(model_name)
        async with self._lock:
            self.adapters.check_removable(model_name)
            self.adapters.remove(model_name)
            self._model_registry.get_models().pop(model_name, None)
            await self.engine.unload_adapter(model_name)
            forget_model(model_name)
        logger.info("unloaded LoRA adapter %s", model_name)

