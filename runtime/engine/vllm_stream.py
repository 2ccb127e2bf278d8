"""Streamed completions as objects: vLLM's completion serving code up to the engine's outputs,
the runtime's own typed pieces after it.

Why: v2 REST, generate_stream and gRPC ModelStreamInfer stream plain completions. Through
vLLM's ``create_completion`` every piece was rendered to an OpenAI SSE chunk (pydantic model,
``model_dump_json``), parsed back with ``json.loads`` and encoded again in the protocol's own
shape; and the first chunk carried the prompt's token ids only so that their number could be
counted. That is front-end CPU per token, the cost that limits a wrapper once the engine is
fast. Here vLLM's serving object still does everything before the engine (model and adapter
check, rendering and tokenising the prompt, ``max_tokens`` from the context, sampling
parameters with the model's defaults, priority, tracing headers), so every parameter keeps
exactly vLLM's meaning and validation; only its stream formatter is replaced, by one that reads
the engine's ``RequestOutput`` objects and yields :class:`~runtime.engine.base.Delta` values.

The replaced method, ``completion_stream_generator``, is vLLM's internal API (0.32): a vLLM
upgrade that changes its signature fails ``tests/runtime/test_vllm_stream.py``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.outputs import RequestOutput
from vllm.v1.engine.exceptions import EngineDeadError

from runtime.engine.base import Delta
from runtime.errors import EngineUnavailableError, ServerError, ServingError, from_status

logger = logging.getLogger(__name__)


class ObjectStreamingCompletion(OpenAIServingCompletion):
    """vLLM's completion serving, whose streamed answer is ``Delta`` objects, not SSE text.

    A piece is yielded whenever the engine produced text; tokens whose text is held back (a
    possible stop string) are counted into the next piece. The last piece has no text and
    carries the finish reason and the token counts. Closing the iterator closes the engine's
    output stream, which aborts the engine request.
    """

    async def completion_stream_generator(
        self, request: Any, engine_inputs: list[Any],
        result_generator: AsyncIterator[tuple[int, RequestOutput]], request_id: str,
        created_time: int, model_name: str, num_prompts: int, tokenizer: Any,
        request_metadata: Any,
    ) -> AsyncGenerator[Any, None]:
        finish: str | None = None
        prompt_tokens: int | None = None
        generated = 0
        pending = 0  # tokens generated since the last piece with text
        cumulative: float | None = None
        want_logprobs = request.logprobs is not None
        try:
            async for _, res in result_generator:
                if prompt_tokens is None and res.prompt_token_ids is not None:
                    prompt_tokens = len(res.prompt_token_ids)
                for output in res.outputs:
                    if output.finish_reason == "error":
                        logger.error("request %s failed inside the engine", request_id)
                        raise ServerError("internal error during generation")
                    count = len(output.token_ids)
                    generated += count
                    pending += count
                    finish = output.finish_reason or finish
                    if want_logprobs and output.cumulative_logprob is not None:
                        cumulative = float(output.cumulative_logprob)
                    if output.text:
                        yield Delta(index=output.index, text=output.text,
                                    prompt_tokens=prompt_tokens, tokens=pending,
                                    cumulative_logprob=cumulative)
                        pending = 0
        except EngineDeadError:  # its text is the engine's internals: logged, not sent
            logger.error("engine died during request %s", request_id)
            raise EngineUnavailableError("engine died") from None
        except ServingError:
            raise
        except Exception as exc:
            # What vLLM's own stream formatter reports in-band (its create_error_response's
            # mapping: validation errors, e.g. an empty prompt, are 400s found only once the
            # engine has the request); a server fault's text stays in the log.
            error = create_error_response(exc).error
            if int(error.code) >= 500:
                logger.error("request %s failed: %r", request_id, exc)
                raise ServerError("internal error during generation") from exc
            raise from_status(int(error.code), error.message) from None
        finally:
            close = getattr(result_generator, "aclose", None)
            if close is not None:
                await close()  # the engine request is aborted if it is still running
        yield Delta(0, "", finish, prompt_tokens, generated, pending, cumulative)


def object_streaming(serving: OpenAIServingCompletion) -> ObjectStreamingCompletion:
    """A view of vLLM's completion serving object (same engine client, models, renderer and
    defaults) that streams :class:`Delta` objects."""
    view = copy.copy(serving)
    view.__class__ = ObjectStreamingCompletion
    return view
