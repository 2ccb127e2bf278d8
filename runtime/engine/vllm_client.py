"""vLLM's engine client, measured: every engine request's tokens and timings, whoever sent it.

Why its own module: the proxy is the one place the runtime's per-protocol, per-model token
metrics are taken; it knows vLLM's ``RequestOutput`` and nothing of the protocols.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from vllm.engine.protocol import EngineClient
from vllm.sampling_params import RequestOutputKind

from runtime.admission import Admission
from runtime.metrics import current_protocol, record_engine_request


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
        return self._measured(
            self._client.generate(prompt, sampling_params, request_id, **kwargs),
            current_protocol.get(),
            getattr(sampling_params, "output_kind", None) == RequestOutputKind.DELTA,
            lora.lora_name if lora is not None else self._model_name,
        )

    async def _measured(self, outputs: AsyncIterator[Any], protocol: str,
                        delta: bool, model: str) -> AsyncIterator[Any]:
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
            close = getattr(outputs, "aclose", None)
            if close is not None:
                await close()  # aborts the engine request if the consumer stopped early
