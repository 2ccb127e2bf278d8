"""Unit tier: the route table (``runtime.routes``) classifies every path the way the pipeline
needs, and every route of the assembled app is either in the table or answers 404."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from runtime import routes
from runtime.routes import Kind
from tests.support.app import assemble


@pytest.mark.parametrize("path,kind,protocol,model", [
    ("/", Kind.HEALTH, routes.V2_REST, None),
    ("/v2/health/ready", Kind.HEALTH, routes.V2_REST, None),
    ("/v2/models/m/ready", Kind.HEALTH, routes.V2_REST, "m"),
    ("/v1/models/m", Kind.HEALTH, routes.V1_REST, "m"),
    ("/metrics", Kind.METRICS, None, None),
    ("/v2", Kind.METADATA, routes.V2_REST, None),
    ("/v2/models/m", Kind.METADATA, routes.V2_REST, "m"),
    ("/v2/models/m/infer", Kind.INFERENCE, routes.V2_REST, "m"),
    ("/v2/models/m/generate", Kind.INFERENCE, routes.V2_GENERATE, "m"),
    ("/v2/models/m/generate_stream", Kind.INFERENCE, routes.V2_GENERATE, "m"),
    ("/v1/models/m:predict", Kind.INFERENCE, routes.V1_REST, "m"),
    ("/v2/repository/models/m/unload", Kind.REPOSITORY, routes.V2_REST, "m"),
    ("/openai/v1/chat/completions", Kind.INFERENCE, routes.OPENAI, None),
    ("/openai/tokenize", Kind.INFERENCE, routes.OPENAI, None),
    ("/v1/completions", Kind.INFERENCE, routes.OPENAI, None),
    ("/openai/v1/models", Kind.METADATA, routes.OPENAI, None),
    ("/openai/scale_elastic_ep", Kind.UNKNOWN, routes.OPENAI, None),
    ("/openai/v1/responses/render", Kind.UNKNOWN, routes.OPENAI, None),
    ("/openai/docs", Kind.UNKNOWN, routes.OPENAI, None),
    ("/docs", Kind.UNKNOWN, routes.V2_REST, None),
    ("/v1/models/m:explain", Kind.UNKNOWN, routes.V1_REST, None),
])
def test_classify(path: str, kind: Kind, protocol: str | None, model: str | None) -> None:
    route = routes.classify(path)
    assert (route.kind, route.protocol, route.model) == (kind, protocol, model)


def test_operator_routes_only_with_the_flag() -> None:
    assert routes.classify("/openai/scale_elastic_ep").kind is Kind.UNKNOWN
    route = routes.classify("/openai/scale_elastic_ep", operator_routes=True)
    assert route.kind is Kind.OPERATOR


def test_versioned_paths_are_served_as_unversioned() -> None:
    assert routes.unversioned("/v2/models/m/versions/3/infer") == "/v2/models/m/infer"
    assert routes.unversioned("/v2/models/m/versions/3") == "/v2/models/m"
    assert routes.unversioned("/v2/models/m/infer") == "/v2/models/m/infer"


def _concrete(path: str) -> str:
    return (path.replace("{model_name}", "smollm2").replace("{model_version}", "1")
            .replace("{response_id}", "r1"))


def app_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route of an ASGI app, mounts expanded."""
    from starlette.routing import Mount

    out = []
    for route in app.routes:
        if isinstance(route, Mount):
            inner = getattr(route.app, "routes", None)
            out += ([(m, route.path + p) for m, p in app_routes(route.app)] if inner is not None
                    else [("GET", route.path), ("POST", route.path)])
            continue
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            out.append((method, route.path))
    return out


def test_every_assembled_route_is_allowlisted_or_404() -> None:
    """Every route KServe, the runtime (and any mount) put on the app: either the table serves
    it, or the gate answers 404 before it runs."""
    assembled = assemble()
    found = app_routes(assembled.app)
    assert ("POST", "/v2/models/{model_name}/infer") in found  # KServe's routes are there

    async def go() -> list[tuple[str, str, int, Kind]]:
        transport = httpx.ASGITransport(app=assembled.app)
        results = []
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for method, path in found:
                if method == "HEAD":
                    continue
                concrete = _concrete(path)
                r = await client.request(method, concrete, json={} if method == "POST" else None)
                results.append((method, concrete, r.status_code,
                                routes.classify(routes.unversioned(concrete)).kind))
        return results

    for method, path, status, kind in asyncio.run(go()):
        assert kind is not Kind.UNKNOWN or status == 404, (method, path, status)
        assert status < 500, (method, path, status)
