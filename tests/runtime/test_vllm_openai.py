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


def test_an_exception_inside_a_validator_is_a_400_without_its_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's "before" validators can raise anything on an untrusted shape; the client gets a
    400 that names the kind of failure, not the exception's text (vLLM's internals)."""
    from runtime.errors import ClientError

    class Exploding:
        def validate_python(self, body: object) -> object:
            raise TypeError("'NoneType' object is not subscriptable in /srv/vllm/secret.py")

    endpoint = vllm_openai.ENDPOINTS["chat"]
    monkeypatch.setitem(vllm_openai.ENDPOINTS, "chat",
                        type(endpoint)(**{**vars(endpoint), "adapter": Exploding()}))
    with pytest.raises(ClientError) as err:
        vllm_openai.parse("chat", {"model": "m", "messages": []})
    assert "TypeError" in err.value.message and "secret" not in err.value.message
    assert "subscriptable" not in err.value.message
