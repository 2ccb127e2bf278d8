"""Each v2 sampling parameter changes the output the way vLLM documents it, on the real model.

Why: the fuzz tests prove that no value of these parameters is a server error, not that any of
them reaches the engine. A parameter the codec dropped would pass those and fail here: each
case compares the answer with the same request without the parameter (greedy, so the baseline
is fixed) and checks the documented effect. The ``generate`` route carries them as JSON, so
lists and maps travel as themselves; every v2 transport shares the codec that reads them
(tests/runtime/test_codecs.py).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.runtime.conftest import MODEL, QUESTION

pytestmark = pytest.mark.slow

LIST_PROMPT = "Count: 1, 1, 1, 1, 1, 1, 1, 1,"


def generate(http: httpx.Client, text: str, **params: Any) -> dict[str, Any]:
    r = http.post(f"/v2/models/{MODEL}/generate", json={"text_input": text, "parameters": {
        "temperature": 0, "max_tokens": 24, **params}})
    assert r.status_code == 200, r.text
    return r.json()


def token_id(http: httpx.Client, text: str) -> int:
    """The one token ``text`` is (vLLM's tokenize route)."""
    r = http.post("/openai/tokenize", json={"model": MODEL, "prompt": text,
                                            "add_special_tokens": False})
    assert r.status_code == 200, r.text
    [tid] = r.json()["tokens"]
    return tid


@pytest.fixture(scope="module")
def answer(http: httpx.Client) -> dict[str, Any]:
    """The greedy chat answer to the capital question: "... Paris ..." and then EOS."""
    out = generate(http, QUESTION, apply_chat_template=True, max_tokens=48)
    assert "Paris" in out["text_output"] and out["finish_reason"] == "stop", out
    return out


def test_min_tokens_holds_off_the_end(http: httpx.Client, answer: dict[str, Any]) -> None:
    n = answer["usage"]["completion_tokens"]
    out = generate(http, QUESTION, apply_chat_template=True, max_tokens=n + 40,
                   min_tokens=n + 8)
    assert out["usage"]["completion_tokens"] >= n + 8, (n, out)


def test_bad_words_are_never_generated(http: httpx.Client, answer: dict[str, Any]) -> None:
    out = generate(http, QUESTION, apply_chat_template=True, max_tokens=48,
                   bad_words=["Paris"])
    assert "Paris" not in out["text_output"], out


def test_stop_strings_with_and_without_the_stop_in_the_output(
        http: httpx.Client, answer: dict[str, Any]) -> None:
    head = answer["text_output"].split("Paris")[0]
    cut = generate(http, QUESTION, apply_chat_template=True, max_tokens=48, stop="Paris")
    assert cut["text_output"] == head and cut["finish_reason"] == "stop", cut
    kept = generate(http, QUESTION, apply_chat_template=True, max_tokens=48, stop="Paris",
                    include_stop_str_in_output=True)
    assert kept["text_output"] == head + "Paris", kept


def test_stop_token_ids_end_the_answer(http: httpx.Client, answer: dict[str, Any]) -> None:
    paris = token_id(http, " Paris")
    out = generate(http, QUESTION, apply_chat_template=True, max_tokens=48,
                   stop_token_ids=[paris])
    assert out["finish_reason"] == "stop"
    assert out["text_output"] == answer["text_output"].split(" Paris")[0], out


def test_logit_bias_forces_a_token(http: httpx.Client) -> None:
    banana = token_id(http, " banana")
    out = generate(http, "My favourite fruit is", max_tokens=6, ignore_eos=True,
                   logit_bias={str(banana): 100})
    assert out["text_output"] == " banana" * 6, out


def test_allowed_token_ids_restrict_the_vocabulary(http: httpx.Client) -> None:
    yes, no = token_id(http, " yes"), token_id(http, " no")
    out = generate(http, "Is Paris in France? Answer:", max_tokens=5, ignore_eos=True,
                   allowed_token_ids=[yes, no])
    words = out["text_output"].split()
    assert len(words) == 5 and set(words) <= {"yes", "no"}, out


def test_special_tokens_are_shown_only_when_asked(http: httpx.Client) -> None:
    eos = token_id(http, "<|im_end|>")
    body = {"max_tokens": 3, "ignore_eos": True, "logit_bias": {str(eos): 100}}
    assert generate(http, "Hello", **body)["text_output"] == ""
    shown = generate(http, "Hello", skip_special_tokens=False, **body)["text_output"]
    assert shown.count("<|im_end|>") == 3, shown


def test_truncate_prompt_tokens_keeps_the_prompts_tail(http: httpx.Client) -> None:
    full = generate(http, LIST_PROMPT, max_tokens=1)
    assert full["usage"]["prompt_tokens"] > 6
    cut = generate(http, LIST_PROMPT, max_tokens=1, truncate_prompt_tokens=6)
    assert cut["usage"]["prompt_tokens"] == 6, cut


@pytest.mark.parametrize("penalty", [
    {"repetition_penalty": 2.0}, {"frequency_penalty": 2.0}, {"presence_penalty": 2.0}])
def test_penalties_change_the_greedy_answer(http: httpx.Client,
                                           penalty: dict[str, float]) -> None:
    plain = generate(http, "My favourite colours are", ignore_eos=True)["text_output"]
    penalised = generate(http, "My favourite colours are", ignore_eos=True,
                         **penalty)["text_output"]
    assert penalised != plain, (plain, penalised)


@pytest.mark.parametrize("penalty", [{"repetition_penalty": 2.0}, {"frequency_penalty": 2.0}])
def test_penalties_break_a_repetition(http: httpx.Client, penalty: dict[str, float]) -> None:
    """(A presence penalty, charged once per token, does not outweigh SmolLM2's certainty here:
    its effect is the case above.)"""
    plain = generate(http, LIST_PROMPT, max_tokens=12, ignore_eos=True)["text_output"]
    assert plain.count("1") >= 3, plain  # greedy SmolLM2 keeps counting ones
    penalised = generate(http, LIST_PROMPT, max_tokens=12, ignore_eos=True,
                         **penalty)["text_output"]
    assert penalised.count("1") < plain.count("1"), (plain, penalised)


@pytest.fixture(scope="module")
def sampled_answers(http: httpx.Client) -> set[str]:
    """The capital answer at temperature 1.0 for four seeds: they differ (it samples)."""
    free = {generate(http, QUESTION, apply_chat_template=True, max_tokens=48, temperature=1.0,
                     seed=seed)["text_output"] for seed in range(4)}
    assert len(free) > 1, free
    return free


@pytest.mark.parametrize("narrow", [{"min_p": 1.0}, {"top_p": 0.001}, {"top_k": 1}],
                         ids=["min_p=1", "top_p=0.001", "top_k=1"])
def test_narrow_sampling_keeps_only_the_most_likely_token(
        http: httpx.Client, answer: dict[str, Any], sampled_answers: set[str],
        narrow: dict[str, float]) -> None:
    """temperature 1.0 samples (``sampled_answers``: the seeds differ); min_p 1.0, a tiny
    top_p or top_k 1 each keep only the most likely token, so every seed gives the greedy
    answer."""
    for seed in range(3):
        out = generate(http, QUESTION, apply_chat_template=True, max_tokens=48,
                       temperature=1.0, seed=seed, **narrow)
        assert out["text_output"] == answer["text_output"], (narrow, out)


def test_default_temperature_samples_on_v2(http: httpx.Client) -> None:
    """Without a temperature v2 samples at the model's default (1.0 for SmolLM2), as the
    OpenAI route does (tests/runtime/test_claims_misc.py::test_default_temperature_samples)."""
    def sampled(seed: int) -> str:
        r = http.post(f"/v2/models/{MODEL}/generate", json={
            "text_input": "Once upon a time", "parameters": {"max_tokens": 16, "seed": seed}})
        assert r.status_code == 200, r.text
        return r.json()["text_output"]

    assert len({sampled(seed) for seed in range(4)}) > 1
