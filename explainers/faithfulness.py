"""The deletion test reported with every explanation.

Why: an attribution is only useful if it is better than chance. Removing the ``k`` features
the explanation ranks highest should lower the response's log-probability more than removing
``k`` features at random; both drops are reported side by side (the random one as a mean over
``trials`` random subsets, or over all subsets when there are no more than ``trials``).
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

from explainers.methods.base import AttributionTask
from explainers.request import int_param

DEFAULT_TRIALS = 16


def _k_and_trials(num_features: int, params: dict[str, Any]) -> tuple[int, int]:
    default_k = max(1, round(0.2 * num_features))
    k = min(int_param(params, "faithfulness_k", default_k, minimum=1), num_features)
    trials = int_param(params, "faithfulness_trials", DEFAULT_TRIALS, minimum=1, maximum=256)
    return k, trials


def deletion_test_cost(num_features: int, params: dict[str, Any]) -> int:
    """Most forward passes the deletion test sends: the top-k set and the random subsets.

    Why: the test runs with every explanation, so its passes count against the request's
    budget like the method's (sets already scored by the method are answered from memory,
    so the real number can be lower, never higher).
    """
    k, trials = _k_and_trials(num_features, params)
    return 1 + min(math.comb(num_features, k), trials)


async def deletion_test(task: AttributionTask, seq_attr: list[float]) -> dict[str, Any]:
    """Top-k vs random-k deletion drops, scored in one batch through the predictor."""
    n = task.num_features
    k, trials = _k_and_trials(n, task.params)
    top = sorted(range(n), key=lambda i: seq_attr[i], reverse=True)[:k]
    if math.comb(n, k) <= trials:
        subsets = [set(c) for c in itertools.combinations(range(n), k)]
        exhaustive = True
    else:
        rng = random.Random(int_param(task.params, "seed", 0, minimum=0))
        subsets = [set(rng.sample(range(n), k)) for _ in range(trials)]
        exhaustive = False
    rows = await task.score_removals([set(top), *subsets])
    base = task.baseline_logprob
    drops = [base - sum(row) for row in rows]
    topk_drop, random_drops = drops[0], drops[1:]
    mean = sum(random_drops) / len(random_drops)
    std = math.sqrt(sum((d - mean) ** 2 for d in random_drops) / len(random_drops))
    return {
        "k": k,
        "topk_features": top,
        "topk_drop": topk_drop,
        "random_drop_mean": mean,
        "random_drop_std": std,
        "random_subsets": len(random_drops),
        "random_exhaustive": exhaustive,
        "beats_random": topk_drop > mean,
    }
