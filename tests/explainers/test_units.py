"""Fast checks of the pure parts: request validation, feature splitting, the surrogate fit."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from explainers.errors import ClientError
from explainers.features import prepare_prompt, split_spans
from explainers.methods.sampled_ablation import _ridge
from explainers.request import parse_request, split_instances

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


@pytest.mark.parametrize("granularity,count", [("token", 15), ("word", 12), ("message", 1)])
def test_granularities(tokenizer, granularity: str, count: int) -> None:
    p = prepare_prompt(tokenizer, prompt=FACTS, messages=None, granularity=granularity)
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
