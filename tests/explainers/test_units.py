"""Fast checks of the pure parts: request validation, feature splitting and limits, the
surrogate fit, the deletion test's cost, the API-key gate and the predictor client's repr."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
from transformers import AutoTokenizer

from explainers.auth import UNAUTHORIZED_MESSAGE, BearerGate
from explainers.errors import ClientError
from explainers.faithfulness import deletion_test_cost
from explainers.features import longest_token_chars, prepare_prompt, split_spans
from explainers.methods.sampled_ablation import _ridge
from explainers.predictor import PredictorClient
from explainers.request import parse_request, split_instances
from runtime.auth import ApiKey

FACTS = "Alice lives in Paris. Bob lives in Rome. Where does Bob live?"


@pytest.fixture(scope="module")
def tokenizer(model_dir: str):
    return AutoTokenizer.from_pretrained(model_dir)


def test_sentence_split_keeps_decimals_and_abbreviation_dots() -> None:
    text = "Pi is 3.14 here. Really?  Yes!\nNew line without stop"
    assert [text[a:b] for a, b in split_spans(text, "sentence")] == [
        "Pi is 3.14 here.", "Really?", "Yes!", "New line without stop"]


def test_features_cover_only_user_text(tokenizer) -> None:
    messages = [{"role": "user", "content": FACTS}]
    p = prepare_prompt(tokenizer, prompt=None, messages=messages, granularity="sentence")
    assert [f.text for f in p.features] == [
        "Alice lives in Paris.", "Bob lives in Rome.", "Where does Bob live?"]
    # the template's default system message is in the ids but in no feature
    text = tokenizer.decode(p.ids)
    assert "You are a helpful AI assistant" in text
    covered = {t for f in p.features for t in f.token_indices}
    assert tokenizer.decode([p.ids[t] for t in sorted(covered)]).strip() == FACTS
    # removal is at the id level: the rest of the prompt is untouched
    without = p.without({0})
    assert tokenizer.decode(without).count("Alice") == 0
    assert len(without) == len(p.ids) - len(p.features[0].token_indices)


@pytest.mark.parametrize("granularity", ["token", "word", "message"])
def test_granularities(tokenizer, granularity: str) -> None:
    p = prepare_prompt(tokenizer, prompt=FACTS, messages=None, granularity=granularity)
    count = {"token": len(tokenizer(FACTS, add_special_tokens=False)["input_ids"]),
             "word": len(FACTS.split()), "message": 1}[granularity]
    assert len(p.features) == count
    for f in p.features:
        assert FACTS[f.char_span[0]:f.char_span[1]] == f.text


@pytest.mark.parametrize("body,needle", [
    ({"prompt": ""}, "empty"),
    ({"messages": [{"role": "user", "content": "  "}]}, "empty"),
    ({"prompt": "x", "granularity": "paragraph"}, "granularity"),
    ({"prompt": "x", "messages": []}, "not both"),
    ({}, "needs a 'prompt'"),
    ({"prompt": "x", "params": []}, "params"),
    ({"prompt": "x", "foo": 1}, "unknown request field"),
])
def test_bad_requests(body: dict, needle: str) -> None:
    with pytest.raises(ClientError, match=needle) as info:
        parse_request(body)
    assert info.value.status == 400


def test_instances_wrapper() -> None:
    assert split_instances({"instances": [{"prompt": "a"}, {"prompt": "b"}]}) == [
        {"prompt": "a"}, {"prompt": "b"}]
    with pytest.raises(ClientError):
        split_instances({"instances": []})


def test_ridge_recovers_linear_weights() -> None:
    rng = np.random.default_rng(1)
    x = (rng.random((64, 5)) < 0.5).astype(float)
    true = np.array([3.0, -1.0, 0.0, 0.5, 2.0])
    y = (x @ true + 7.0)[:, None]
    w, r2 = _ridge(x, y, 1e-6)
    np.testing.assert_allclose(w[:, 0], true, atol=1e-3)
    assert r2 > 0.999


def test_prompt_over_the_token_limit_is_refused_before_features(tokenizer) -> None:
    n = len(tokenizer(FACTS)["input_ids"])
    with pytest.raises(ClientError, match=rf"the prompt has {n} tokens; the limit is {n - 1} "
                                          r"\(--max_prompt_tokens\)"):
        prepare_prompt(tokenizer, prompt=FACTS, messages=None, granularity="word",
                       max_tokens=n - 1)
    assert len(prepare_prompt(tokenizer, prompt=FACTS, messages=None, granularity="word",
                              max_tokens=n).ids) == n


def test_prompt_that_cannot_fit_is_refused_untokenized(tokenizer) -> None:
    class Counting:
        """The tokenizer, counting how often it tokenizes."""

        calls = 0

        def __call__(self, *args, **kwargs):
            Counting.calls += 1
            return tokenizer(*args, **kwargs)

    longest = longest_token_chars(tokenizer)
    text = "x" * (10 * longest + 1)
    with pytest.raises(ClientError, match="more than 10 tokens can hold"):
        prepare_prompt(Counting(), prompt=text, messages=None, granularity="word",
                       max_tokens=10, longest_token=longest)
    assert Counting.calls == 0
    # the bound is sound: no token of the vocabulary covers more characters
    assert all(len(tokenizer.decode([i])) <= longest for i in range(len(tokenizer)))


def test_features_of_a_long_prompt_are_built_in_near_linear_time(tokenizer) -> None:
    """8,000 words: the old quadratic assignment took ~4 s here; now ~0.1 s."""
    words = [f"w{i % 97}" for i in range(8000)]
    text = " ".join(words)
    t0 = time.perf_counter()
    p = prepare_prompt(tokenizer, prompt=text, messages=None, granularity="word")
    assert time.perf_counter() - t0 < 2.0
    assert [f.text for f in p.features] == words
    assert sorted(t for f in p.features for t in f.token_indices) == list(range(len(p.ids)))


@pytest.mark.parametrize("n,params,expected", [
    (3, {}, 1 + 3),                                    # k = 1: all 3 single-feature sets
    (10, {}, 1 + 16),                                  # k = 2: C(10, 2) = 45 > 16 trials
    (10, {"faithfulness_trials": 4}, 1 + 4),
    (4, {"faithfulness_k": 4}, 1 + 1),                 # one subset: all features
])
def test_deletion_test_cost(n: int, params: dict, expected: int) -> None:
    assert deletion_test_cost(n, params) == expected


def test_predictor_client_never_shows_its_key() -> None:
    for key in (ApiKey("s3cret-value"), "s3cret-value"):
        client = PredictorClient(url="http://p", model="m", api_key=key)
        assert "s3cret-value" not in repr(client) and "s3cret-value" not in str(client)
        assert client.api_key.header() == {"Authorization": "Bearer s3cret-value"}
    assert PredictorClient(url="http://p", model="m").api_key.header() == {}


async def _ok(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("path,headers,status", [
    ("/v1/models/smollm2:explain", {}, 401),
    ("/v1/models/smollm2:explain", {"Authorization": "Bearer nope"}, 401),
    ("/v1/models/smollm2:explain", {"Authorization": "Basic k3y"}, 401),
    ("/v1/models/smollm2:explain", {"Authorization": "Bearer k3y"}, 200),
    ("/v1/models/smollm2:explain", {"Authorization": "bearer k3y"}, 200),
    ("/v1/explainer/methods", {}, 401),
    ("/v1/models", {}, 401),
    ("/metrics", {}, 401),
    ("/v2/models/smollm2/infer", {}, 401),
    ("/", {}, 200),
    ("/v2/health/live", {}, 200),
    ("/v2/health/ready", {}, 200),
    ("/v1/models/smollm2", {}, 200),
    ("/v2/models/smollm2/ready", {}, 200),
])
def test_bearer_gate(path: str, headers: dict, status: int) -> None:
    async def call() -> httpx.Response:
        app = BearerGate(_ok, api_key=ApiKey("k3y"))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as client:
            return await client.get(path, headers=headers)

    r = asyncio.run(call())
    assert r.status_code == status
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {"error": UNAUTHORIZED_MESSAGE, "type": "Unauthorized"}


def test_bearer_gate_without_a_key_is_open() -> None:
    async def call() -> int:
        app = BearerGate(_ok, api_key=ApiKey())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as client:
            return (await client.post("/v1/models/m:explain")).status_code

    assert asyncio.run(call()) == 200
