"""The engine behind ``runtime.engine.base``'s interface: vLLM's (0.32) async engine, its
OpenAI serving state, and the v2 / generate translation onto that serving code.

Why vLLM's serving code: the v2 and generate protocols are answered by vLLM's own OpenAI
serving classes (``OpenAIServingCompletion`` / ``OpenAIServingChat``), so every sampling
parameter has exactly the OpenAI path's name, meaning, default and validation. This is one of
the ``runtime/engine/vllm_*.py`` modules, the only ones importing vLLM (ruff TID251 bans
``import vllm`` elsewhere; ``runtime/engine/__init__.py`` says which does what): the engine
arguments come from ``vllm_args``, the client from ``vllm_client``, OpenAI requests and
handlers from ``vllm_openai``, streamed completions as objects from ``vllm_stream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import types
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.responses import Response
from vllm.engine.protocol import EngineClient
from vllm.entrypoints.launchers.api_server.app_state import init_app_state
from vllm.entrypoints.launchers.app import build_app
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from vllm.exceptions import VLLMValidationError
from vllm.platforms import current_platform
from vllm.utils.gc_utils import freeze_gc_heap
from vllm.v1.engine.exceptions import EngineDeadError

from runtime.admission import Admission
from runtime.engine import structured, vllm_fixes, vllm_openai, vllm_tools
from runtime.engine.base import Completion, Delta, Engine, PreparedRequest
from runtime.engine.vllm_args import (  # noqa: F401 - engine_parser: re-exported
    engine_help,
    engine_parser,
    parse_engine_args,
)
from runtime.engine.vllm_client import InstrumentedEngineClient, build_engine_client
from runtime.engine.vllm_stream import ObjectStreamingCompletion, object_streaming
from runtime.errors import ClientError, EngineUnavailableError, ServerError, from_status
from runtime.limits import Limits, Work
from runtime.settings import RuntimeSettings

logger = logging.getLogger(__name__)

# Sampling settings accepted in v2 `parameters` (OpenAI completions names; vLLM validates them).
V2_PARAMETERS: dict[str, str] = {
    "max_tokens": "int, default 16 (completions) / up to the context (chat template)",
    "min_tokens": "int, default 0",
    "temperature": "float >= 0, default from the model's generation config, else 1.0",
    "top_p": "float in (0, 1]",
    "top_k": "int, -1 or 0 disables",
    "min_p": "float in [0, 1]",
    "stop": "string or list of strings",
    "stop_token_ids": "list of int",
    "seed": "int",
    "presence_penalty": "float in [-2, 2]",
    "frequency_penalty": "float in [-2, 2]",
    "repetition_penalty": "float > 0",
    "ignore_eos": "bool",
    "include_stop_str_in_output": "bool",
    "skip_special_tokens": "bool",
    "spaces_between_special_tokens": "bool",
    "truncate_prompt_tokens": "int",
    "bad_words": "list of strings",
    "logit_bias": "object token-id -> float",
    "allowed_token_ids": "list of int",
    "logprobs": "int >= 0: logprobs of each sampled token and this many alternatives (vLLM "
                "SamplingParams); makes cumulative_logprob available",
    structured.PARAMETER: structured.DESCRIPTION,
}


@contextlib.contextmanager
def _client_errors() -> Any:
    """vLLM raises its validation errors (e.g. ``max_tokens`` < 1) from the serving code; its
    own OpenAI routes render them as 400, and so does every protocol here."""
    try:
        yield
    except VLLMValidationError as exc:
        raise ClientError(str(exc)) from None
    except EngineDeadError as exc:  # its text is the engine's internals: logged, not sent
        logger.error("engine died: %s", exc)
        raise EngineUnavailableError("engine died") from None


class VLLMEngine(Engine):
    """vLLM's AsyncLLM, its OpenAI app, and the v2/generate translation onto its serving code."""

    def __init__(self, settings: RuntimeSettings, admission: Admission) -> None:
        self.settings = settings
        self.admission = admission
        self.model_name = settings.model_name
        self.args = parse_engine_args(settings)
        self.client: InstrumentedEngineClient | None = None
        self.openai_app: Any = None  # vLLM's FastAPI app, mounted by the protocol layer
        self._stack = contextlib.AsyncExitStack()
        self._stats_task: asyncio.Task[None] | None = None
        self.supported_tasks: tuple[str, ...] = ()
        self._lora_on_cpu = bool(self.args.enable_lora) and current_platform.is_cpu()
        self._object_stream: ObjectStreamingCompletion | None = None

    @property
    def max_model_len(self) -> int:
        assert self.client is not None
        return int(self.client.model_config.max_model_len)

    async def start(self) -> None:
        """Build the engine (its core runs in a child process) and vLLM's OpenAI app."""
        # vLLM loads this as a plugin in every process; installing it here too keeps the fix
        # in a forked engine process even where the plugin's metadata is shadowed.
        vllm_fixes.install()
        raw = await self._stack.enter_async_context(build_engine_client(self.args))
        self.client = InstrumentedEngineClient(raw, self.model_name, self.admission)
        self.admission.capacity = int(raw.vllm_config.scheduler_config.max_num_seqs)
        tasks = await raw.get_supported_tasks()
        # Building vLLM's app imports a package that reconfigures the root logger (vLLM restores
        # only handler levels): keep the runtime's logging (request ids, levels) as it was.
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        app = build_app(self.args, tasks, raw.model_config)
        root.handlers[:] = handlers
        root.setLevel(level)
        await init_app_state(self.client, app.state, self.args, tasks)
        # vLLM's engine-error handler stops `app.state.server` when the engine dies; the mounted
        # app has none, and the runtime's supervisor owns that decision (health turns false).
        app.state.server = types.SimpleNamespace(should_exit=False)
        # Nothing stored without bound: vLLM's Responses store (VLLM_ENABLE_RESPONSES_API_STORE)
        # keeps every response forever; the runtime serves no retrieve/cancel, so it stays off
        # (`store: true` is then ignored, as vLLM does by default).
        responses = getattr(app.state, "openai_serving_responses", None)
        if responses is not None:
            responses.enable_store = False
        self.openai_app = app
        self.supported_tasks = tuple(tasks)
        if "generate" in tasks:
            self._object_stream = object_streaming(app.state.openai_serving_completion)
        # What vLLM's own lifespan does, which does not run for a mounted app (docs/platform-notes.md).
        freeze_gc_heap()
        if not self.args.disable_log_stats:
            self._stats_task = asyncio.create_task(self._log_stats())

    async def _log_stats(self) -> None:
        from vllm import envs

        while True:
            await asyncio.sleep(envs.VLLM_LOG_STATS_INTERVAL)
            with contextlib.suppress(Exception):
                await raw_client(self).do_log_stats()

    async def stop(self) -> None:
        """Shut the engine down (its child process too)."""
        if self._stats_task:
            self._stats_task.cancel()
        await self._stack.aclose()

    async def check_health(self) -> None:
        if self.client is None:
            raise EngineUnavailableError("engine not started")
        if self.client.errored:
            raise EngineUnavailableError(f"engine dead: {self.client.dead_error}")
        await self.client.check_health()

    @property
    def parameters(self) -> dict[str, str]:
        return dict(V2_PARAMETERS)

    # ---- LoRA adapters: vLLM's own model registry (OpenAIServingModels) holds them ----

    @property
    def max_lora_rank(self) -> int | None:
        return int(self.args.max_lora_rank) if self.args.enable_lora else None

    def _models(self) -> Any:
        if self.openai_app is None:
            raise EngineUnavailableError("engine loading")
        return self.openai_app.state.openai_serving_models

    def static_adapters(self) -> dict[str, str]:
        return {name: r.lora_path for name, r in self._models().lora_requests.items()}

    async def load_adapter(self, name: str, path: str) -> None:
        with _client_errors():
            result = await self._models().load_lora_adapter(
                LoadLoRAAdapterRequest(lora_name=name, lora_path=path))
        if isinstance(result, ErrorResponse):
            if result.error.code >= 500:  # checked folders should never get here
                logger.error("vLLM could not load adapter %s: %s", name, result.error.message)
            self._raise_error(result)

    async def unload_adapter(self, name: str) -> None:
        # vLLM drops the name; requests already holding its LoRARequest run to the end, and the
        # engine's adapter cache (--max-cpu-loras, LRU) frees the weights when it needs room.
        result = await self._models().unload_lora_adapter(
            UnloadLoRAAdapterRequest(lora_name=name))
        self._raise_error(result)

    # ---- v2 / generate / v1: prompts + parameters -> vLLM's typed requests ----

    def _state(self) -> Any:
        if self.openai_app is None:
            raise EngineUnavailableError("engine loading")
        if "generate" not in self.supported_tasks:
            raise ClientError(
                f"model {self.model_name} does not generate text (it supports "
                f"{', '.join(self.supported_tasks)}); use /openai/v1/embeddings")
        return self.openai_app.state

    def prepare(self, prompts: list[str], params: dict[str, Any], *, chat: bool, stream: bool,
                limits: Limits, model: str | None = None) -> PreparedRequest:
        """Validate once with vLLM's OpenAI request models: the same names, meanings,
        defaults and messages as the OpenAI routes."""
        if not prompts:
            raise ClientError("empty batch: at least one prompt is required")
        unknown = sorted(set(params) - set(V2_PARAMETERS))
        if unknown:
            raise ClientError(
                f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(V2_PARAMETERS)}")
        if structured.PARAMETER in params:  # an object, or a JSON string (gRPC: scalars)
            params = {**params,
                      structured.PARAMETER: structured.decode(params[structured.PARAMETER])}
        extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        # Token ids only where nothing else gives the counts: per prompt of a completions
        # batch (its usage is summed) and a chat stream's prompt (on its first chunk). One
        # prompt's usage says it all, and a streamed completion is read as objects
        # (runtime.engine.vllm_stream).
        ids = {"return_token_ids": True} if (chat and stream) or (
            not chat and not stream and len(prompts) > 1) else {}
        base = {"model": model or self.model_name, **params, **extra, **ids}
        if chat:
            if "logprobs" in params:  # SamplingParams' name -> the chat API's two fields
                base |= {"logprobs": True, "top_logprobs": params["logprobs"]}
            items = [vllm_openai.parse("chat", {**base, "messages": [
                {"role": "user", "content": p}]}) for p in prompts]
            vllm_tools.verify(items[0], self.client)  # one constraint for the batch
            works = [vllm_openai.work("chat", r, limits) for r in items]
            one = works[0]
            return PreparedRequest(items, True, len(prompts),
                                   Work(len(prompts), one.n, one.max_tokens, one.stop_sequences))
        request = vllm_openai.parse("completion", {**base, "prompt": prompts})
        vllm_tools.verify(request, self.client)
        return PreparedRequest([request], False, len(prompts),
                               vllm_openai.work("completion", request, limits))

    @staticmethod
    def _raise_error(result: Any) -> None:
        if isinstance(result, ErrorResponse):
            raise from_status(int(result.error.code), result.error.message)

    async def complete(self, request: PreparedRequest) -> list[Completion]:
        state = self._state()
        if request.chat:
            with _client_errors():
                results = await asyncio.gather(
                    *(state.openai_serving_chat.create_chat_completion(r) for r in request.items))
            out = []
            for res in results:
                self._raise_error(res)
                choice = res.choices[0]
                content = choice.logprobs.content if choice.logprobs is not None else None
                out.append(Completion(choice.message.content or "", choice.finish_reason,
                                      res.usage.prompt_tokens, res.usage.completion_tokens or 0,
                                      _logprob_sum(c.logprob for c in content)
                                      if content is not None else None))
            return out
        with _client_errors():
            res = await state.openai_serving_completion.create_completion(request.items[0])
        self._raise_error(res)
        # One choice per prompt; usage is summed over the batch, the token ids are per choice.
        single = len(res.choices) == 1
        out = []
        for c in sorted(res.choices, key=lambda c: c.index):
            prompt_tokens = len(c.prompt_token_ids) if c.prompt_token_ids is not None else (
                res.usage.prompt_tokens if single else None)
            completion_tokens = len(c.token_ids) if c.token_ids is not None else (
                res.usage.completion_tokens if single else None)
            logprobs = c.logprobs.token_logprobs if c.logprobs is not None else None
            out.append(Completion(c.text, c.finish_reason, prompt_tokens, completion_tokens,
                                  _logprob_sum(logprobs) if logprobs is not None else None))
        return out

    async def stream(self, request: PreparedRequest) -> AsyncGenerator[Delta, None]:
        state = self._state()
        if request.prompts != 1:
            raise ClientError("streaming takes exactly one prompt")
        with _client_errors():
            if not request.chat:  # read as objects: no SSE text to parse back
                assert self._object_stream is not None  # set with "generate" (_state)
                pieces = await self._object_stream.create_completion(request.items[0])
                self._raise_error(pieces)
                return pieces
            gen = await state.openai_serving_chat.create_chat_completion(request.items[0])
        self._raise_error(gen)
        return self._deltas(gen)

    # ---- OpenAI: vLLM's request objects and handlers (runtime.engine.vllm_openai) ----

    def openai_parse(self, kind: str, body: Any) -> Any:
        state = self.openai_app.state if self.openai_app is not None else None
        vllm_openai.supported(kind, state)  # a clear 404 before the body is read as that API
        if kind == "invocations":
            return vllm_openai.invocation(body, state)
        return vllm_openai.parse(kind, body)

    def openai_model(self, request: Any) -> str | None:
        return vllm_openai.model_of(request)

    def openai_work(self, kind: str, request: Any, limits: Limits) -> Work:
        # vLLM 0.32's CPU LoRA logits layer computes prompt logprobs with the LoRA mapping of
        # the sampled tokens: the shapes disagree and the engine dies (vLLM issue 29955). A
        # client's request must not stop the server: refuse it instead (docs/platform-notes.md).
        if self._lora_on_cpu and vllm_openai.asks_prompt_logprobs(kind, request):
            raise ClientError("prompt logprobs (prompt_logprobs, or echo with logprobs) are not "
                              "available on this server: vLLM's CPU build stops its engine "
                              "when it computes them with --enable-lora")
        return vllm_openai.work(kind, request, limits)

    async def openai_respond(self, kind: str, request: Any, raw_request: Any) -> Response:
        state = self.openai_app.state if self.openai_app is not None else None
        return await vllm_openai.respond(kind, request, state, raw_request)

    def version(self) -> dict[str, str]:
        from vllm import __version__

        return {"version": str(__version__)}

    async def openai_models(self) -> Response:
        return await vllm_openai.list_models(
            self.openai_app.state if self.openai_app is not None else None)

    async def _deltas(self, sse: AsyncIterator[str]) -> AsyncGenerator[Delta, None]:
        """A chat stream's pieces, from vLLM's SSE chunks: the chat formatter (tool-call and
        reasoning parsers) is vLLM's, so its output is read back here."""
        finish: str | None = None
        tokens = 0  # generated since the last yielded piece
        cumulative: float | None = None
        prompt_tokens: int | None = None  # from the first chunk's prompt_token_ids
        try:
            async for event in sse:
                payload = event.removeprefix("data: ").strip()
                if not payload or payload == "[DONE]":
                    continue
                obj = json.loads(payload)
                if "error" in obj:
                    err = obj["error"]
                    raise from_status(int(err.get("code") or 500), err.get("message", str(err)))
                if obj.get("prompt_token_ids") is not None:  # chat: on the first chunk
                    prompt_tokens = len(obj["prompt_token_ids"])
                for ch in obj.get("choices") or ():
                    text = (ch.get("delta") or {}).get("content")
                    finish = ch.get("finish_reason") or finish
                    tokens += len(ch.get("token_ids") or ())
                    if ch.get("prompt_token_ids") is not None:
                        prompt_tokens = len(ch["prompt_token_ids"])
                    logprobs = _chunk_logprobs(ch.get("logprobs"))
                    if logprobs is not None:
                        cumulative = (cumulative or 0.0) + _logprob_sum(logprobs)
                    if text:
                        yield Delta(index=ch.get("index", 0), text=text,
                                    prompt_tokens=prompt_tokens, tokens=tokens,
                                    cumulative_logprob=cumulative)
                        tokens = 0
                usage = obj.get("usage")
                if usage and not obj.get("choices"):
                    yield Delta(0, "", finish, usage.get("prompt_tokens"),
                                usage.get("completion_tokens"), tokens, cumulative)
        finally:
            close = getattr(sse, "aclose", None)
            if close is not None:
                await close()  # aborts the engine request when the consumer went away


def _logprob_sum(values: Any) -> float:
    """Sum of the sampled tokens' logprobs (a missing entry counts as nothing)."""
    return float(sum(v for v in values if v is not None))


def _chunk_logprobs(logprobs: Any) -> list[float] | None:
    """The sampled tokens' logprobs of one streamed chat chunk."""
    if not logprobs:
        return None
    return [item.get("logprob") for item in logprobs.get("content") or ()]


def raw_client(engine: VLLMEngine) -> EngineClient:
    """The un-instrumented vLLM engine client (for stats logging and health)."""
    assert engine.client is not None
    return engine.client._client


__all__ = ["VLLMEngine", "engine_help", "ServerError"]
