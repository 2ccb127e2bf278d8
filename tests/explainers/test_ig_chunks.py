"""Integrated gradients in step chunks equals integrated gradients in one pass (in process).

Why: ``--ig_batch_tokens`` splits the ``n_steps`` forward/backward passes into chunks to bound
memory; the attributions must not depend on the chunking. No server: the method runs on a
short prompt with the real model, once unchunked and once in chunks of 2 steps (2 + 1: an
uneven last chunk). In float64 the results agree to 1e-9; in float32 (what the explainer
runs) different batch shapes round differently through 30 layers, about 1e-4 of the largest
score (the end-to-end test in ``test_limits.py`` compares float32 results with that margin).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from explainers.errors import ClientError
from explainers.features import prepare_prompt
from explainers.methods.base import AttributionTask, MethodSettings
from explainers.methods.integrated_gradients import IntegratedGradients
from explainers.predictor import PredictorClient, ScoreStats

FACTS = "Bob lives in Rome. Where does Bob live?"
N_STEPS = 3


@pytest.fixture(scope="module")
def setup(model_dir: str) -> tuple[IntegratedGradients, AttributionTask, int]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    method = IntegratedGradients(MethodSettings(model_dir=model_dir, tokenizer=tokenizer,
                                                ig_batch_tokens=64))
    prompt = prepare_prompt(tokenizer, prompt=FACTS, messages=None, granularity="word")
    response = tokenizer(" Rome", add_special_tokens=False)["input_ids"]
    task = AttributionTask(prompt=prompt, response_ids=response, baseline=[0.0] * len(response),
                           params={"n_steps": N_STEPS},
                           client=PredictorClient(url="http://unused", model="m"),
                           stats=ScoreStats())
    [space] = tokenizer(" ", add_special_tokens=False)["input_ids"]
    return method, task, space


def test_chunked_equals_unchunked(setup) -> None:
    method, task, space = setup
    method._load().to(torch.float64)  # exact arithmetic: only the chunking can differ
    whole = method._attribute(task, space, N_STEPS, N_STEPS)
    assert max(abs(x) for x in whole) > 1.0
    chunked = method._attribute(task, space, N_STEPS, 2)
    assert chunked == pytest.approx(whole, rel=1e-9, abs=1e-9)


def test_step_batch_follows_the_token_bound(setup) -> None:
    method, task, _ = setup
    seq = len(task.prompt.ids) + len(task.response_ids)
    params = {"n_steps": N_STEPS}
    assert method.step_batch(seq, params) == min(N_STEPS, 64 // seq)
    # a request may ask for smaller chunks, never for larger ones than the bound
    assert method.step_batch(seq, params | {"internal_batch_size": 1}) == 1
    assert method.step_batch(1, params | {"internal_batch_size": N_STEPS}) == N_STEPS
    assert method.step_batch(32, params) == 2
    assert method.step_batch(seq, params | {"n_steps": 2}) == min(2, 64 // seq)
    with pytest.raises(ClientError, match=r"--ig_batch_tokens"):
        method.step_batch(65, params)
