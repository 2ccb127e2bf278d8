"""KServe's v1 protocol for text: ``POST /v1/models/{m}:predict``.

Why serve it: KServe's v1 route is what ``kserve``'s ``InferenceRESTClient`` (protocol v1) and
many existing callers send; answering it from the same pipeline (rather than KServe's default
handler, which fails on a generative model) keeps one meaning for every parameter.
Contract: ``{"instances": [str, ...], "parameters": {...}}`` -> ``{"predictions": [str, ...]}``,
with the same sampling parameters (and ``apply_chat_template``) as v2.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from runtime.engine.base import Engine
from runtime.errors import ClientError
from runtime.pipeline import Pipeline
from runtime.protocol import v2
from runtime.protocol.json_body import read_json


def decode_predict(body: Any) -> v2.TextRequest:
    """Check a v1 predict body against the text contract."""
    if not isinstance(body, dict):
        raise ClientError("request body must be a JSON object")
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise ClientError("'instances' must be a non-empty list of strings (the prompts); "
                          "for tensors use /v2/models/{model}/infer")
    bad = [type(i).__name__ for i in instances if not isinstance(i, str)]
    if bad:
        raise ClientError(f"'instances' must hold strings, got {bad[0]}")
    params = body.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ClientError("'parameters' must be a JSON object")
    return v2.text_request(instances, params)


def build_router(engine: Engine, pipeline: Pipeline) -> APIRouter:
    """The v1 predict route, bound to one engine and the pipeline."""
    router = APIRouter()

    @router.post("/v1/models/{model_name}:predict")
    async def predict(model_name: str, request: Request) -> dict[str, Any]:
        text = decode_predict(await read_json(request))
        prepared = engine.prepare(text.prompts, text.params, chat=text.chat, stream=False,
                                  limits=pipeline.limits, model=model_name)
        pipeline.admit(prepared.work)
        completions = await engine.complete(prepared)
        return {"predictions": [c.text for c in completions],
                "finish_reasons": [c.finish_reason for c in completions]}

    return router
