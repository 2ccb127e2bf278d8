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
from vllm.entrypoints.anthropic.protocol import (
    AnthropicCountTokensRequest,
    AnthropicMessagesRequest,
)
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.entrypoints.pooling.classify.protocol import ClassificationRequest
from vllm.entrypoints.pooling.embed.protocol import CohereEmbedRequest, EmbeddingRequest
from vllm.entrypoints.pooling.pooling.protocol import PoolingRequest
from vllm.entrypoints.pooling.scoring.protocol import RerankRequest, ScoreRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest
from vllm.entrypoints.serve.utils.sse_keep_alive import with_sse_keep_alive
from vllm.entrypoints.speech_to_text.transcription.protocol import TranscriptionRequest
from vllm.entrypoints.speech_to_text.translation.protocol import TranslationRequest
from vllm.exceptions import VLLMValidationError

from runtime.engine import vllm_tools
from runtime.errors import ClientError, EngineUnavailableError, NotFoundError, from_status
from runtime.limits import TOKEN_ID_LISTS, Limits, Work, check_lists

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    """One served OpenAI endpoint: its request model and the vLLM handler that answers it."""

    adapter: pydantic.TypeAdapter[Any]
    state_attr: str  # the handler's name on vLLM's app state
    method: str | None  # the handler's method (None: the handler is called)
    unsupported: str  # what the model cannot do, when the handler is absent
    render: str = "openai"  # how its answer is rendered: openai, responses, anthropic, audio


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
    "responses": Endpoint(pydantic.TypeAdapter(ResponsesRequest), "openai_serving_responses",
                          "create_responses", "Responses API", "responses"),
    "messages": Endpoint(pydantic.TypeAdapter(AnthropicMessagesRequest),
                         "anthropic_serving_messages", "create_messages", "Messages API",
                         "anthropic"),
    "count_tokens": Endpoint(pydantic.TypeAdapter(AnthropicCountTokensRequest),
                             "anthropic_serving_messages", "count_tokens", "Messages API",
                             "anthropic"),
    "score": Endpoint(pydantic.TypeAdapter(ScoreRequest), "serving_scores", None, "Score API"),
    "rerank": Endpoint(pydantic.TypeAdapter(RerankRequest), "serving_scores", None,
                       "Rerank (Score) API"),
    "cohere_embed": Endpoint(pydantic.TypeAdapter(CohereEmbedRequest), "serving_embedding",
                             None, "Embeddings API"),
    "pooling": Endpoint(pydantic.TypeAdapter(PoolingRequest), "serving_pooling", None,
                        "Pooling API"),
    "classify": Endpoint(pydantic.TypeAdapter(ClassificationRequest), "serving_classification",
                         None, "Classification API"),
    "transcription": Endpoint(pydantic.TypeAdapter(TranscriptionRequest),
                              "openai_serving_transcription", "create_transcription",
                              "Transcriptions API", "audio"),
    "translation": Endpoint(pydantic.TypeAdapter(TranslationRequest),
                            "openai_serving_translation", "create_translation",
                            "Translations API", "audio"),
}
# /invocations (SageMaker's): the first of these whose handler the model has and whose request
# model the body fits, in vLLM's order.
INVOCATION_ORDER = ("chat", "completion", "embedding", "classify", "rerank", "score", "pooling")
AUDIO_KINDS = frozenset({"transcription", "translation"})
GENERATION_KINDS = frozenset({"chat", "completion", "responses", "messages"})


@dataclass(frozen=True)
class Invocation:
    """A validated /invocations body: the endpoint it turned out to be, and its request."""

    kind: str
    request: Any


def supported(kind: str, state: Any) -> None:
    """A 404 naming the API when the model has no handler for ``kind`` (a generative model
    asked to rerank, an embedding model asked for messages, ...), as vLLM words it."""
    if kind == "invocations" or state is None:
        return
    endpoint = ENDPOINTS[kind]
    if getattr(state, endpoint.state_attr, None) is None:
        raise from_status(404, f"The model does not support {endpoint.unsupported}")


def invocation(body: Any, state: Any) -> Invocation:
    """vLLM's /invocations dispatch: the body validated as the first endpoint that fits."""
    if not isinstance(body, dict):
        raise ClientError("request body must be a JSON object")
    tried = []
    for kind in INVOCATION_ORDER:
        endpoint = ENDPOINTS[kind]
        if state is None or getattr(state, endpoint.state_attr, None) is None:
            continue
        tried.append(kind)
        try:
            return Invocation(kind, parse(kind, body))
        except ClientError:
            continue
    raise ClientError("the body fits none of the requests this model serves on /invocations "
                      f"(tried: {', '.join(tried) or 'none'})")


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
        raise ClientError("request body must be a multipart form with the audio file"
                          if kind in AUDIO_KINDS else "request body must be a JSON object")
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


def _inputs(value: Any) -> int:
    """How many inputs a pooling or scoring field holds (a list, else one)."""
    return len(value) if isinstance(value, list) else 1


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
    if kind == "responses":
        if request.max_output_tokens is None:
            request.max_output_tokens = limits.token_cap()
        return Work(1, 1, request.max_output_tokens, 0)
    if kind == "messages":  # Anthropic's max_tokens is required; stop_sequences are stops
        return Work(1, 1, request.max_tokens, _stops(request.stop_sequences))
    if kind in ("embedding", "pooling", "classify"):
        return Work(_count_prompts(getattr(request, "input", None)))
    if kind == "cohere_embed":
        return Work(len(request.texts or request.images or request.inputs or ()) or 1)
    if kind == "score":  # each query and each document is one input to the engine
        return Work(_inputs(request.data_1) + _inputs(request.data_2))
    if kind == "rerank":
        return Work(_inputs(request.documents))
    if kind == "invocations":
        return work(request.kind, request.request, limits)
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
    if isinstance(request, Invocation):
        request = request.request
    return getattr(request, "model", None) or None


def _responses_events(events: Any) -> Any:
    """The Responses API's stream as vLLM's route writes it: one named SSE event per object."""
    async def convert() -> Any:
        async for event in events:
            yield (f"event: {getattr(event, 'type', 'unknown')}\n"
                   f"data: {event.model_dump_json(indent=None, by_alias=True)}\n\n")
    return convert()


def _render_error(result: ErrorResponse, render: str) -> Response:
    """vLLM's error answer, in the endpoint's own shape (Anthropic's on the Messages API)."""
    if result.error.code >= 500:
        logger.error("vLLM answered %d: %s", result.error.code, result.error.message)
    if render == "anthropic":
        from runtime.protocol.http_errors import anthropic_error_type

        return JSONResponse({"type": "error", "error": {
            "type": anthropic_error_type(result.error.code),
            "message": result.error.message}}, status_code=result.error.code)
    return JSONResponse(result.model_dump(), status_code=result.error.code)


def _dump(result: pydantic.BaseModel, render: str) -> dict[str, Any]:
    if render == "responses":
        return result.model_dump(mode="json", by_alias=True)
    if render == "anthropic":
        return result.model_dump(exclude_none=True)
    return result.model_dump()


async def respond(kind: str, request: Any, state: Any, raw_request: Request) -> Response:
    """Hand a validated request to vLLM's handler; render its answer as vLLM's routes do."""
    if state is None:
        raise EngineUnavailableError("engine loading")
    if isinstance(request, Invocation):
        kind, request = request.kind, request.request
    endpoint = ENDPOINTS[kind]
    handler = getattr(state, endpoint.state_attr, None)
    if handler is None:
        raise NotFoundError(f"The model does not support {endpoint.unsupported}")
    call = handler if endpoint.method is None else getattr(handler, endpoint.method)
    # A named or required tool choice is decoded under the tools' schema by the runtime.
    forced = vllm_tools.force(request) if kind == "chat" else None
    if kind in ("chat", "completion"):
        vllm_tools.verify(request, getattr(handler, "engine_client", None))
    try:
        if endpoint.render == "audio":  # vLLM's route reads the upload, bounded, first
            from vllm.entrypoints.speech_to_text.base.utils import read_upload_with_limit

            result = await call(await read_upload_with_limit(request.file), request,
                                raw_request)
        else:
            result = await call(request, raw_request)
    except Exception as exc:  # vLLM's routes render these through create_error_response
        result = create_error_response(exc)
    if forced is not None and isinstance(result, ChatCompletionResponse):
        result = forced.finish(result)
    elif forced is not None and not isinstance(result, ErrorResponse | Response):
        result = forced.stream(result)
    if isinstance(result, ErrorResponse):
        return _render_error(result, endpoint.render)
    if isinstance(result, Response):
        return result
    if isinstance(result, pydantic.BaseModel):
        return JSONResponse(_dump(result, endpoint.render))
    if endpoint.render == "responses":
        result = _responses_events(result)
    interval = float(getattr(getattr(state, "args", None), "sse_keep_alive_interval", 0) or 0)
    return StreamingResponse(with_sse_keep_alive(result, interval),
                             media_type="text/event-stream")


async def list_models(state: Any) -> Response:
    """``GET /openai/v1/models``: vLLM's model list."""
    if state is None:
        raise EngineUnavailableError("engine loading")
    models = await state.openai_serving_models.show_available_models()
    return JSONResponse(models.model_dump())
