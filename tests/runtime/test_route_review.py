"""Unit tier: every route of vLLM's own app is decided in the route table (issue 23).

vLLM's app is built from the installed vLLM (``build_app``, as ``runtime/engine/vllm_engine.py``
builds it) with every router it has switched on: all tasks (generate, pooling, audio), its
development and RL routes (``VLLM_SERVER_DEV_MODE``), runtime LoRA updates, a profiler, the
tokenizer-info endpoint, fault tolerance, the Cohere API. A route of it that is in none of the
table's classes (served, operator, refused with a reason) fails here, so a vLLM upgrade cannot
add a route nobody reviewed; each class is then checked against what ``routes.classify`` does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from runtime import routes
from runtime.routes import Decision, Kind

_BUILD = textwrap.dedent("""
    import json, os, types
    os.environ.update(VLLM_SERVER_DEV_MODE="1", VLLM_ENABLE_COHERE_API="1",
                      VLLM_ALLOW_RUNTIME_LORA_UPDATING="1")
    from vllm.config.profiler import ProfilerConfig
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "unused"])
    args.enable_fault_tolerance = True
    args.enable_tokenizer_info_endpoint = True
    args.profiler_config = ProfilerConfig(profiler="torch", torch_profiler_dir="/tmp/unused")
    tasks = ("generate", "transcription", "realtime", "render", "embed", "classify",
             "token_embed", "token_classify", "plugin")
    found = {}
    # One app per pooling task: vLLM registers pooling, classify, embed and score routers
    # from the model's pooling task.
    for pooling in ("embed", "classify", "token_embed", "token_classify", "plugin", None):
        config = types.SimpleNamespace(
            get_pooling_task=lambda supported, p=pooling: p, architecture="Unused",
            hf_config=types.SimpleNamespace(num_labels=1), runner_type="pooling")
        for route in build_app(args, tasks, config).routes:
            methods = sorted(getattr(route, "methods", None) or {"WEBSOCKET"})
            found.setdefault(route.path, set()).update(methods)
    print("ROUTES=" + json.dumps({path: sorted(m) for path, m in found.items()}))
""")


@pytest.fixture(scope="module")
def vllm_routes() -> dict[str, list[str]]:
    """Path -> methods of every route vLLM's app has with every router on (built in a child
    process: vLLM's switches are environment variables, and building the app reconfigures
    logging)."""
    result = subprocess.run([sys.executable, "-c", _BUILD], capture_output=True, text=True,
                            timeout=300, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("ROUTES=")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    found: dict[str, list[str]] = json.loads(lines[-1][len("ROUTES="):])
    assert "/v1/chat/completions" in found and "/v1/responses" in found  # it did enumerate
    return found


def test_every_vllm_route_is_decided(vllm_routes: dict[str, list[str]]) -> None:
    undecided = []
    for path in sorted(vllm_routes):
        try:
            routes.vllm_decision(path)
        except KeyError:
            undecided.append(f"{path} {vllm_routes[path]}")
    assert not undecided, (
        "vLLM routes in none of the route table's classes (runtime/routes.py: serve them "
        "through the pipeline, add them to OPERATOR_PATHS, or refuse them in REFUSED_PATHS "
        "with a reason): " + ", ".join(undecided))


def test_the_table_names_no_route_vllm_lacks(vllm_routes: dict[str, list[str]]) -> None:
    """A decision about a route vLLM no longer has is stale (a rename would go unnoticed)."""
    decided = set(routes.REFUSED_PATHS) | set(routes.OPERATOR_PATHS) | set(routes.OWN_PATHS) \
        | set(routes.OPENAI_ENDPOINTS)
    # vLLM registers Cohere's chat only where the optional cohere SDK imports.
    decided -= {"/cohere/v2/chat"}
    assert sorted(decided - set(vllm_routes)) == []


def _concrete(path: str) -> str:
    return path.replace("{response_id}", "resp_123")


def test_each_class_is_what_the_table_does(vllm_routes: dict[str, list[str]]) -> None:
    """Served: classified as served, under /openai and unprefixed (vLLM's paths); operator:
    only under /openai and only with --enable_operator_routes; refused: a 404 with the
    reason, whatever the flags."""
    for path in sorted(vllm_routes):
        decision, why = routes.vllm_decision(path)
        concrete = _concrete(path)
        prefixed = "/openai" + concrete
        if decision is Decision.SERVED:
            if path in routes.OPENAI_ENDPOINTS:
                for served in (prefixed, concrete):
                    route = routes.classify(served)
                    assert route.kind is Kind.INFERENCE, served
                    assert route.endpoint == routes.OPENAI_ENDPOINTS[path]
            else:
                assert routes.classify(concrete).kind is not Kind.UNKNOWN, path
        elif decision is Decision.OPERATOR:
            assert routes.classify(prefixed, operator_routes=True).kind is Kind.OPERATOR, path
            assert routes.classify(prefixed).kind is Kind.UNKNOWN, path
            assert routes.classify(concrete, operator_routes=True).kind is Kind.UNKNOWN, path
        else:
            assert decision is Decision.REFUSED and why, path
            for refused in (prefixed, concrete):
                route = routes.classify(refused, operator_routes=True)
                assert route.kind is Kind.UNKNOWN, refused
                assert route.reason == why, refused


@pytest.mark.parametrize("path,kind,protocol,endpoint", [
    ("/v1/responses", Kind.INFERENCE, routes.OPENAI, "responses"),
    ("/openai/v1/responses", Kind.INFERENCE, routes.OPENAI, "responses"),
    ("/v1/messages", Kind.INFERENCE, routes.ANTHROPIC, "messages"),
    ("/openai/v1/messages/count_tokens", Kind.INFERENCE, routes.ANTHROPIC, "count_tokens"),
    ("/v2/rerank", Kind.INFERENCE, routes.OPENAI, "rerank"),
    ("/v2/embed", Kind.INFERENCE, routes.OPENAI, "cohere_embed"),
    ("/invocations", Kind.INFERENCE, routes.OPENAI, "invocations"),
    ("/version", Kind.METADATA, routes.OPENAI, "version"),
    ("/ping", Kind.HEALTH, routes.V2_REST, None),
    ("/v1/responses/resp_1", Kind.UNKNOWN, routes.OPENAI, None),
    ("/v1/messages/render", Kind.UNKNOWN, routes.ANTHROPIC, None),
    ("/tokenize", Kind.INFERENCE, routes.OPENAI, "tokenize"),
])
def test_new_routes(path: str, kind: Kind, protocol: str, endpoint: str | None) -> None:
    route = routes.classify(path)
    assert (route.kind, route.protocol, route.endpoint) == (kind, protocol, endpoint)
