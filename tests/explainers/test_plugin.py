"""A third-party method, installed from a small package during the test, is listed and used.

The package lives in a temporary folder, declares an entry point in the group
``kserve_llm.explainer_methods``, and is ``pip install --target``-ed into another temporary
folder that only the explainer process under test has on its ``PYTHONPATH``: the project's
venv (shared with every other test and engineer) is never modified.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.explainers.conftest import expected_passes, explain, start_explainer

pytestmark = pytest.mark.slow

PLUGIN = '''
"""Keep-only attribution: the response log-prob with ONLY feature i kept, minus with none."""
from explainers.methods.base import Attribution, ExplanationMethod


class KeepOnly(ExplanationMethod):
    name = "keep_only"
    granularities = frozenset({"sentence", "message"})
    description = "Test plugin: log p(response | only feature i) - log p(response | none)."

    def cost(self, num_features, params):
        return num_features + 1

    async def explain(self, task):
        n = task.num_features
        everything = set(range(n))
        rows = await task.score_removals([everything - {i} for i in range(n)] + [everything])
        empty = sum(rows[-1])
        return Attribution(seq_attr=[sum(r) - empty for r in rows[:-1]],
                           extra={"empty_prompt_logprob": empty})
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "kserve-llm-keep-only-test-plugin"
version = "0.0.1"

[project.entry-points."kserve_llm.explainer_methods"]
keep_only = "keep_only_plugin:KeepOnly"
'''


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True, timeout=180)


@pytest.fixture
def plugin_path(tmp_path: Path) -> str:
    """A folder holding the installed plugin (code and entry-point metadata), for PYTHONPATH."""
    src, target = tmp_path / "src", tmp_path / "site"
    src.mkdir()
    (src / "keep_only_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (src / "pyproject.toml").write_text(PYPROJECT)
    pip("install", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target),
        str(src))
    assert list(target.glob("*.dist-info/entry_points.txt")), "the entry point was not installed"
    return str(target)


def test_installed_plugin_is_listed_and_used(plugin_path: str, predictor_url: str,
                                             model_dir: str) -> None:
    host = predictor_url.split("://", 1)[1]
    pythonpath = os.pathsep.join(p for p in (plugin_path, os.environ.get("PYTHONPATH")) if p)
    server = start_explainer(host, model_dir, name="explainer-plugin",
                             extra=["--methods=keep_only,leave_one_out"],
                             env={"PYTHONPATH": pythonpath})
    try:
        listed = httpx.get(f"{server.url}/v1/explainer/methods").json()["methods"]
        assert [m["name"] for m in listed] == ["keep_only", "leave_one_out"]  # the allowlist
        plugin = next(m for m in listed if m["name"] == "keep_only")
        assert plugin["granularities"] == ["message", "sentence"]
        body = {"messages": [{"role": "user", "content":
                              "Alice lives in Paris. Bob lives in Rome. Where does Bob live?"}],
                "response": "Bob lives in Rome.", "method": "keep_only",
                "granularity": "sentence", "html": False}
        r = explain(server, body)
        assert r.status_code == 200, r.text
        [e] = r.json()["explanations"]
        assert e["method"] == "keep_only"
        # the baseline, the plugin's sets (all but feature i, for each i, and all), and the
        # deletion test's sets: nothing is scored twice
        n = len(e["input_features"])
        everything = frozenset(range(n))
        method_sets = {everything - {i} for i in range(n)} | {everything}
        assert e["stats"]["forward_passes"] == expected_passes(method_sets, e)
        attr = dict(zip([f["text"] for f in e["input_features"]], e["seq_attr"], strict=True))
        # alone, the supporting fact makes "Bob lives in Rome." far likelier than the distractor
        assert attr["Bob lives in Rome."] > attr["Alice lives in Paris."] + 1.0, attr
        assert e["method_info"]["empty_prompt_logprob"] < e["baseline_logprob"]
        # the plugin's own granularity list is enforced, and the allowlist hides other methods
        assert explain(server, body | {"granularity": "word"}).status_code == 400
        r = explain(server, body | {"method": "sampled_ablation"})
        assert r.status_code == 400 and "keep_only, leave_one_out" in r.json()["error"]
    finally:
        server.stop()
