"""Shared paths and helpers of the deployment tests (manifests, images, local runner, Ray)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deployment.manifests import Manifest, find_isvc, load_manifests

REPO = Path(__file__).resolve().parents[2]
RUNTIMES_DIR = REPO / "servingruntimes"
EXAMPLES_DIR = RUNTIMES_DIR / "examples"
DOCKER_DIR = REPO / "docker"
DATA = Path(__file__).parent / "data"
RUNTIME_FILES = sorted(RUNTIMES_DIR.glob("*.yaml"))
EXAMPLE_FILES = sorted(EXAMPLES_DIR.glob("*.yaml"))
ALL_YAML = sorted(RUNTIMES_DIR.rglob("*.yaml"))


def crd_schemas() -> dict[str, dict[str, Any]]:
    """openAPIV3Schema per ``group/version/Kind`` (copied from KServe, see the file's provenance)."""
    return json.loads((DATA / "kserve-crd-schemas.json").read_text())["schemas"]


def runtimes() -> list[Manifest]:
    return load_manifests(RUNTIME_FILES)


def example(name: str) -> Manifest:
    """The InferenceService of ``servingruntimes/examples/<name>.yaml``."""
    return find_isvc(load_manifests([EXAMPLES_DIR / f"{name}.yaml"]))


@pytest.fixture(scope="session")
def schemas() -> dict[str, dict[str, Any]]:
    return crd_schemas()
