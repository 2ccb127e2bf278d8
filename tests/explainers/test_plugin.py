"""A third-party method, installed from a small package during the test, is listed and used.

The package lives in a temporary folder, declares an entry point in the group
``kserve_llm.explainer_methods``, and is ``pip install``-ed into this venv for the test only.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.explainers.conftest import explain, start_explainer

pytestmark = pytest.mark.slow

DIST = "kserve-llm-keep-only-test-plugin"

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

PYPROJECT = f'''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{DIST}"
version = "0.0.1"

[project.entry-points."kserve_llm.explainer_methods"]
keep_only = "keep_only_plugin:KeepOnly"
'''


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True, timeout=180)


@pytest.fixture
def installed_plugin(tmp_path: Path):
    (tmp_path / "keep_only_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(tmp_path))
    try:
        yield
    finally:
        pip("uninstall", "-y", DIST)


def test_installed_plugin_is_listed_and_used(installed_plugin, predictor_url: str,
                                             model_dir: str) -> None:
    host = predictor_url.split("://", 1)[1]
    server = start_explainer(host, model_dir, name="explainer-plugin",
                             extra=["--methods=keep_only,leave_one_out"])
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
        # baseline, the method's 4 sets, the deletion test's 3 single-feature sets
        assert e["stats"]["forward_passes"] == 1 + 4 + 3
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
