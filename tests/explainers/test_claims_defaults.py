"""The explainer's documented defaults, read from its real command line (fast tier).

docs/explainer.md, "Running it": ``--max_instances`` 8, ``--max_features`` 1024,
``--max_prompt_tokens`` 2048 (each error names its flag) and integrated gradients in chunks of
at most ``--ig_batch_tokens`` (1024) tokens. The explainer is built with ``build_explainer`` from
the arguments KServe passes and nothing else, so a changed default shows up here. No predictor is
involved: its client is replaced by a stub that stops the request where it would first be
called, which proves every limit check before it let the request through.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import pytest

from explainers.errors import ClientError
from explainers.explainer import Explainer
from explainers.server import build_explainer, build_parser

KSERVE_ARGS = ["--model_name=smollm2", "--predictor_host=127.0.0.1:1"]


class ReachedThePredictor(Exception):
    """Raised by the stub client: the request passed every limit check."""


async def _stop(*_args: Any, **_kwargs: Any) -> Any:
    raise ReachedThePredictor


@pytest.fixture(scope="module")
def default_args(model_dir: str) -> argparse.Namespace:
    """What ``python -m explainers`` parses from KServe's arguments (plus the tokenizer)."""
    return build_parser().parse_args([*KSERVE_ARGS, f"--model_dir={model_dir}"])


@pytest.fixture(scope="module")
def explainer(default_args: argparse.Namespace) -> Explainer:
    built, _key = build_explainer(default_args)
    built.client.score = _stop  # type: ignore[method-assign]
    built.client.generate = _stop  # type: ignore[method-assign]
    return built


def tokens(n: int) -> str:
    """A prompt of exactly ``n`` SmolLM2 tokens (one token feature each)."""
    return "a" + " a" * (n - 1)


def explain(explainer: Explainer, body: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(explainer.explain_body(body))


def refusal(explainer: Explainer, body: dict[str, Any]) -> str:
    with pytest.raises(ClientError) as info:
        explain(explainer, body)
    return info.value.message


def test_parser_defaults_are_the_documented_values() -> None:
    """README: `--max_instances` 8, `--max_features` 1024, `--max_prompt_tokens` 2048,
    `--ig_batch_tokens` (1024)."""
    args = build_parser().parse_args(KSERVE_ARGS)
    assert (args.max_instances, args.max_features, args.max_prompt_tokens,
            args.ig_batch_tokens) == (8, 1024, 2048, 1024)


def test_max_features_default_is_1024(explainer: Explainer) -> None:
    """README: a prompt over `--max_features` 1024 features is a 400 naming the flag."""
    body = {"prompt": tokens(1025), "response": "a", "method": "sampled_ablation",
            "granularity": "token"}
    assert "has 1025 features" in (msg := refusal(explainer, body))
    assert "the limit is 1024 (--max_features)" in msg
    with pytest.raises(ReachedThePredictor):
        explain(explainer, body | {"prompt": tokens(1024)})


def test_max_instances_default_is_8(explainer: Explainer) -> None:
    """README: more than `--max_instances` 8 explain requests in `instances` is a 400."""
    one = {"prompt": "Alice lives in Paris.", "response": "Paris"}
    msg = refusal(explainer, {"instances": [one] * 9})
    assert "holds 9 explain requests; the limit is 8 (--max_instances)" in msg
    with pytest.raises(ReachedThePredictor):
        explain(explainer, {"instances": [one] * 8})


def test_max_prompt_tokens_default_is_2048(explainer: Explainer) -> None:
    """README: prompt plus response over `--max_prompt_tokens` 2048 is a 400 naming the flag."""
    msg = refusal(explainer, {"prompt": tokens(2049), "granularity": "message"})
    assert "has 2049 tokens; the limit is 2048 (--max_prompt_tokens)" in msg
    msg = refusal(explainer, {"prompt": tokens(2048), "granularity": "message"})
    assert "no room for an answer within 2048 tokens" in msg
    body = {"prompt": tokens(2047), "granularity": "message"}
    msg = refusal(explainer, body | {"response": " a a"})
    assert "have 2049 tokens together; the limit is 2048 (--max_prompt_tokens)" in msg
    with pytest.raises(ReachedThePredictor):
        explain(explainer, body | {"response": " a"})
    with pytest.raises(ReachedThePredictor):  # no response: generated within the room left
        explain(explainer, body)


def test_ig_batch_tokens_default_is_1024(explainer: Explainer) -> None:
    """README: integrated gradients runs in chunks of at most `--ig_batch_tokens` (1024)
    tokens per forward + backward pass."""
    ig: Any = explainer.methods["integrated_gradients"]
    assert ig.settings.ig_batch_tokens == 1024
    params = {"n_steps": 16}
    assert ig.step_batch(64, params) == 16  # 16 x 64 = 1024 tokens: one pass
    assert ig.step_batch(65, params) == 15  # 16 x 65 > 1024: 15 steps per pass
    assert ig.step_batch(1024, params) == 1
    with pytest.raises(ClientError, match=r"more than the 1024 tokens .*--ig_batch_tokens"):
        ig.step_batch(1025, params)
