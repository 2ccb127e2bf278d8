"""Shared paths and helpers of the deployment tests (manifests, images, local runner, Ray)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from deployment.manifests import Manifest, find_isvc, load_manifests
from tests.support.server import stop_group

REPO = Path(__file__).resolve().parents[2]
RUNTIMES_DIR = REPO / "servingruntimes"
EXAMPLES_DIR = RUNTIMES_DIR / "examples"
DOCKER_DIR = REPO / "docker"
DATA = Path(__file__).parent / "data"
RUNTIME_FILES = sorted(RUNTIMES_DIR.glob("*.yaml"))
EXAMPLE_FILES = sorted(EXAMPLES_DIR.glob("*.yaml"))
ALL_YAML = sorted(RUNTIMES_DIR.rglob("*.yaml"))


RUNNER_START_TIMEOUT = 420  # the runner's start-up, probes included (docs/deployment.md)


def serve_runner(argv: list[str], log: Path, url_line: str, env: Mapping[str, str],
                 timeout: float = RUNNER_START_TIMEOUT) -> tuple[subprocess.Popen, str]:
    """Start ``python -m deployment run`` in serving mode (its output in ``log``); return it
    and the URL its ``<url_line>: URL`` line printed, once it printed "all probes passed".
    The runner is stopped if that does not happen."""
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True, env=dict(env))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text()
            if "all probes passed" in text:
                found = re.search(rf"^{re.escape(url_line)}: (https?://\S+)$", text, re.M)
                assert found, text[-4000:]
                return proc, found.group(1)
            if proc.poll() is not None:
                raise AssertionError(f"the runner exited with {proc.returncode}:\n"
                                     f"{text[-6000:]}")
            time.sleep(2)
        raise AssertionError(f"no probes passed in {timeout} s:\n{log.read_text()[-4000:]}")
    except BaseException:
        stop_runner(proc)
        raise


def stop_runner(proc: subprocess.Popen) -> int:
    """SIGTERM the runner (it stops its workloads and exits), unless it already exited."""
    return proc.returncode if proc.poll() is not None else stop_group(proc)


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


def example_key(path: Path, name: str | None = None) -> str:
    """The inference key an example file's Secret holds (its ``key`` entry): what the local
    runner writes as the key file, so what a client of the running example sends."""
    from deployment.manifests import secrets_in

    secrets = secrets_in([path.read_text()])
    [secret] = [v for k, v in secrets.items() if name is None or k == name]
    return secret["key"]
