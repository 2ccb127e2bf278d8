"""Which OpenAI requests make vLLM compute prompt logprobs (the LoRA-on-CPU refusal rests on
it): ``prompt_logprobs``, or ``echo`` with completions' ``logprobs`` / chat's
``top_logprobs`` (default 0), as vLLM's ``to_sampling_params`` decides."""

from __future__ import annotations

import pytest

from runtime.engine import vllm_openai

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}


@pytest.mark.parametrize("kind,body,asks", [
    ("completion", COMPLETION, False),
    ("completion", {**COMPLETION, "prompt_logprobs": 0}, True),
    ("completion", {**COMPLETION, "echo": True}, False),
    ("completion", {**COMPLETION, "echo": True, "logprobs": 0}, True),
    ("completion", {**COMPLETION, "logprobs": 2}, False),
    ("chat", CHAT, False),
    ("chat", {**CHAT, "echo": True}, True),
    ("chat", {**CHAT, "prompt_logprobs": 1}, True),
    ("chat", {**CHAT, "logprobs": True, "top_logprobs": 2}, False),
])
def test_asks_prompt_logprobs_as_vllm_decides(kind: str, body: dict, asks: bool) -> None:
    request = vllm_openai.parse(kind, body)
    assert vllm_openai.asks_prompt_logprobs(kind, request) is asks
    assert (request.to_sampling_params(16, {}).prompt_logprobs is not None) is asks
