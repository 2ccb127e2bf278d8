"""vLLM's OpenAI request objects and serving handlers, called directly (no mounted app).

Why not vLLM's FastAPI app: mounted whole it serves routes the runtime never meant to serve
(elastic scaling, stored responses, its docs) and it parses every body a second time after
the runtime's checks. Here each served OpenAI endpoint is parsed and validated once into vLLM's
own request model (the same pydantic classes vLLM's routes use, so every field keeps vLLM's
name, meaning, default and validation), the limits read the validated values, and the request
object goes straight to vLLM's serving handler, whose answer is rendered as vLLM's routes do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pydantic
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest
from vllm.entrypoints.serve.utils.sse_keep_alive import with_sse_keep_alive
from vllm.exceptions import VLLMValidationError

from runtime.engine import vllm_tools
from runtime.errors import ClientError, EngineUnavailableError
from runtime.limits import TOKEN_ID_LISTS, Limits, Work, check_lists

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    """One served OpenAI endpoint: its request model and the vLLM handler that answers it."""

    adapter: pydantic.TypeAdapter[Any]
    state_attr: str  # the handler's name on vLLM's app state
    method: str | None  # the handler's method (None: the handler is called)
    unsupported: str  # what the model cannot do, when the handler is absent


ENDPOINTS: dict[str, Endpoint] = {
    "chat": Endpoint(pydantic.TypeAdapter(ChatCompletionRequest), "openai_serving_chat",
                     "create_chat_completion", "Chat Completions API"),
    "completion": Endpoint(pydantic.TypeAdapter(CompletionRequest),
                           "openai_serving_completion", "create_completion", "Completions API"),
    "embedding": Endpoint(pydantic.TypeAdapter(EmbeddingRequest), "serving_embedding", None,
                          "Embeddings API"),
    "tokenize": Endpoint(pydantic.TypeAdapter(TokenizeRequest), "serving_tokenization",
                         "create_tokenize", "Tokenize API"),
    "detokenize": Endpoint(pydantic.TypeAdapter(DetokenizeRequest), "serving_tokenization",
                           "create_detokenize", "Detokenize API"),
}


def validation_message(exc: pydantic.ValidationError) -> str:
    """vLLM-like wording for a request that does not fit its model (bounded in length)."""
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith(
            ("function-", "json-or-python", "tagged-union", "union")))
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)[:1000] or "invalid request"


def parse(kind: str, body: Any) -> Any:
    """Validate an OpenAI body into vLLM's request object for endpoint ``kind``."""
    if not isinstance(body, dict):
        raise ClientError("request body must be a JSON object")
    try:
        request = ENDPOINTS[kind].adapter.validate_python(body)
    except pydantic.ValidationError as exc:
        raise ClientError(validation_message(exc)) from None
    except VLLMValidationError as exc:
        raise ClientError(str(exc)) from None
    except Exception as exc:  # vLLM's "before" validators may fail on any untrusted shape
        # Not a validation message but an exception from inside a validator (TypeError,
        # KeyError, ...): its text describes vLLM's code, not the request. Logged, not sent.
        logger.info("request refused by a validator: %s: %s", type(exc).__name__, exc)
        raise ClientError(f"invalid request: a field has the wrong shape or type "
                          f"({type(exc).__name__} in validation)") from None
    if kind in ("chat", "completion"):
        vllm_tools.check(request)
    return request


def _count_prompts(prompt: Any) -> int:
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


def _stops(stop: Any) -> int:
    return 1 if isinstance(stop, str) else len(stop) if isinstance(stop, list) else 0


def _entries(value: Any) -> int:
    return len(value) if isinstance(value, list | dict) else 0


def work(kind: str, request: Any, limits: Limits) -> Work:
    """What a validated request asks of the engine; a request that gives no ``max_tokens``
    gets the server's cap (``--default_max_tokens`` / ``--max_tokens_limit``) set on it.

    The list-valued sampling parameters are capped here (``limits.check_lists``), where every
    protocol's generation request passes (OpenAI, and each prompt of a v2, generate, KServe v1
    or gRPC request), rather than through ``Work``, which a v2 chat batch rebuilds."""
    if kind in ("chat", "completion"):
        check_lists(limits, {name: _entries(getattr(request, name, None))
                             for name in (*TOKEN_ID_LISTS, "bad_words")})
    if kind == "chat":
        if request.max_completion_tokens is None and request.max_tokens is None:
            request.max_tokens = limits.token_cap()
        asked = request.max_completion_tokens if request.max_completion_tokens is not None \
            else request.max_tokens
        return Work(1, request.n or 1, asked, _stops(request.stop))
    if kind == "completion":
        if request.max_tokens is None:
            request.max_tokens = limits.token_cap()
        return Work(_count_prompts(request.prompt), request.n or 1, request.max_tokens,
                    _stops(request.stop))
    if kind == "embedding":
        return Work(_count_prompts(getattr(request, "input", None)))
    return Work()


def asks_prompt_logprobs(kind: str, request: Any) -> bool:
    """Whether vLLM will compute prompt logprobs for this request: ``prompt_logprobs``, or
    ``echo`` with ``logprobs`` (completions) / ``top_logprobs`` (chat, default 0), as vLLM's
    ``to_sampling_params`` decides."""
    if getattr(request, "prompt_logprobs", None) is not None:
        return True
    if kind not in ("chat", "completion") or not getattr(request, "echo", False):
        return False
    return (request.logprobs if kind == "completion" else request.top_logprobs) is not None


def model_of(request: Any) -> str | None:
    """The model a validated request names (None: the default)."""
    return getattr(request, "model", None) or None


async def respond(kind: str, request: Any, state: Any, raw_request: Request) -> Response:
    """Hand a validated request to vLLM's handler; render its answer as vLLM's routes do."""
    if state is None:
        raise EngineUnavailableError("engine loading")
    endpoint = ENDPOINTS[kind]
    handler = getattr(state, endpoint.state_attr, None)
    if handler is None:
        err = ClientError(f"The model does not support {endpoint.unsupported}")
        err.http_status = 404
        err.grpc_code = "NOT_FOUND"
        raise err
    call = handler if endpoint.method is None else getattr(handler, endpoint.method)
    # A named or required tool choice is decoded under the tools' schema by the runtime.
    forced = vllm_tools.force(request) if kind == "chat" else None
    if kind in ("chat", "completion"):
        vllm_tools.verify(request, getattr(handler, "engine_client", None))
    try:
        result = await call(request, raw_request)
    except Exception as exc:  # vLLM's routes render these through create_error_response
        result = create_error_response(exc)
    if forced is not None and isinstance(result, ChatCompletionResponse):
        result = forced.finish(result)
    elif forced is not None and not isinstance(result, ErrorResponse | Response):
        result = forced.stream(result)
    if isinstance(result, ErrorResponse):
        if result.error.code >= 500:
            logger.error("vLLM answered %d: %s", result.error.code, result.error.message)
        return JSONResponse(result.model_dump(), status_code=result.error.code)
    if isinstance(result, Response):
        return result
    if isinstance(result, pydantic.BaseModel):
        return JSONResponse(result.model_dump())
    interval = float(getattr(getattr(state, "args", None), "sse_keep_alive_interval", 0) or 0)
    return StreamingResponse(with_sse_keep_alive(result, interval),
                             media_type="text/event-stream")


async def list_models(state: Any) -> Response:
    """``GET /openai/v1/models``: vLLM's model list."""
    if state is None:
        raise EngineUnavailableError("engine loading")
    models = await state.openai_serving_models.show_available_models()
    return JSONResponse(models.model_dump())
