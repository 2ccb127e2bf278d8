"""vLLM's engine client: built without blocking the event loop, and measured (every engine
request's tokens and timings, whoever sent it).

Why its own module: the proxy is the one place the runtime's per-protocol, per-model token
metrics are taken; it knows vLLM's ``RequestOutput`` and nothing of the protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
from argparse import Namespace
from collections.abc import AsyncIterator
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.engine.protocol import EngineClient
from vllm.entrypoints.launchers.cli_args import propagate_flash_late_interaction
from vllm.sampling_params import RequestOutputKind
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM

from runtime import tracing
from runtime.admission import Admission
from runtime.metrics import current_model, current_protocol, record_engine_request

ENGINE_EXIT_GRACE = 2.0  # seconds the engine-core process gets to exit before it is killed


@contextlib.asynccontextmanager
async def build_engine_client(args: Namespace) -> AsyncIterator[AsyncLLM]:
    """vLLM's ``build_async_engine_client`` with the blocking part run in a worker thread.

    Why not vLLM's own: it builds ``AsyncLLM`` on the event loop, and that constructor blocks
    while the engine-core process starts and loads the model (a minute on CPU). Here the loop
    keeps answering meanwhile: health probes and early requests get their 503 + Retry-After
    instead of waiting in the kernel's accept queue. vLLM supports building ``AsyncLLM`` with
    no running loop (its output and stats tasks start lazily); they are started here, back on
    the loop, so an engine failure before the first request is still seen. The same steps as
    vLLM's builder otherwise (arguments, config, ``reset_mm_cache``, ``shutdown``).
    """
    engine_args = AsyncEngineArgs.from_cli_args(args)
    propagate_flash_late_interaction(args, engine_args)
    usage = UsageContext.OPENAI_API_SERVER
    config = await asyncio.to_thread(engine_args.create_engine_config, usage_context=usage)
    llm: AsyncLLM = await asyncio.to_thread(
        AsyncLLM.from_vllm_config, vllm_config=config, usage_context=usage,
        enable_log_requests=engine_args.enable_log_requests,
        aggregate_engine_logging=engine_args.aggregate_engine_logging,
        disable_log_stats=engine_args.disable_log_stats)
    try:
        llm._run_output_handler()  # what the constructor does when a loop is running
        await llm.reset_mm_cache()
        yield llm
    finally:
        # The runtime's drain has run by now (or was cut short on purpose): what the engine
        # core still holds is abandoned. A short grace to exit cleanly, not the drain again.
        llm.shutdown(timeout=min(config.shutdown_timeout, ENGINE_EXIT_GRACE))


class InstrumentedEngineClient:
    """vLLM's engine client with every ``generate`` call measured for the runtime's metrics.

    Why a proxy: vLLM's serving classes call ``engine_client.generate`` themselves; wrapping the
    client measures every engine request, whichever protocol sent it, with vLLM's own
    per-request timestamps (``RequestOutput.metrics``).
    """

    def __init__(self, client: EngineClient, model_name: str, admission: Admission) -> None:
        self._client = client
        self._model_name = model_name
        self._admission = admission

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def generate(self, prompt: Any, sampling_params: Any, request_id: str,
                 **kwargs: Any) -> AsyncIterator[Any]:
        # The protocol label is read now, in the request's context: the stream may be
        # iterated later, from the response-writing task.
        lora = kwargs.get("lora_request")
        # With tracing on, vLLM's llm_request span is a child of the runtime's span of this
        # request (not of the caller's: vLLM's serving code passes the raw request's headers,
        # and none for v2, generate and gRPC).
        span = tracing.current.get()
        if span is not None:
            kwargs["trace_headers"] = span.engine_request()
        return self._measured(
            self._client.generate(prompt, sampling_params, request_id, **kwargs),
            current_protocol.get(),
            getattr(sampling_params, "output_kind", None) == RequestOutputKind.DELTA,
            current_model.get() or (lora.lora_name if lora is not None else self._model_name),
            span,
        )

    async def _measured(self, outputs: AsyncIterator[Any], protocol: str,
                        delta: bool, model: str,
                        span: tracing.RequestSpan | None = None) -> AsyncIterator[Any]:
        prompt_tokens = generated = 0
        last = None
        self._admission.engine_started()
        try:
            async for out in outputs:
                last = out
                if out.prompt_token_ids is not None:
                    prompt_tokens = len(out.prompt_token_ids)
                n = sum(len(o.token_ids) for o in out.outputs)
                generated = generated + n if delta else n
                yield out
        finally:
            self._admission.engine_finished()
            ttft = tpot = None
            stats = getattr(last, "metrics", None)
            if stats is not None and stats.first_token_ts:
                ttft = stats.first_token_latency or None
                if stats.num_generation_tokens > 1:
                    tpot = (stats.last_token_ts - stats.first_token_ts) / (
                        stats.num_generation_tokens - 1)
            record_engine_request(model, protocol, prompt_tokens=prompt_tokens,
                                  generation_tokens=generated, ttft=ttft, tpot=tpot)
            if span is not None:
                span.engine_finished(prompt_tokens, generated)
            close = getattr(outputs, "aclose", None)
            if close is not None:
                await close()  # aborts the engine request if the consumer stopped early
