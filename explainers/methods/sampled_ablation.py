"""Sampled ablation with a linear surrogate (KernelSHAP / ContextCite style).

Why: leave-one-out costs one forward pass per feature and misses interactions. Here a fixed
budget of random masks (each feature kept with probability ``keep_prob``) is scored in one
batch, and a ridge regression of the response log-probability on the masks gives one weight
per feature, so the cost is the number of samples whatever the number of features.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from explainers.errors import ClientError
from explainers.methods.base import Attribution, AttributionTask, ExplanationMethod
from explainers.request import int_param

DEFAULT_SAMPLES = 32


class SampledAblation(ExplanationMethod):
    """Fit ``logp(mask) ~ b + sum_i w_i * mask_i`` over random masks; ``w_i`` is the score."""

    name = "sampled_ablation"
    description = ("Black box: random feature masks scored in one batch, fitted with a linear "
                   "surrogate; the cost is the sample budget, not the feature count.")
    params_doc = {
        "num_samples": f"random masks to score (default {DEFAULT_SAMPLES})",
        "keep_prob": "probability that a feature is kept in a mask (default 0.5)",
        "ridge": "L2 penalty of the surrogate fit (default 0.01)",
        "seed": "random seed (default 0)",
    }

    def cost(self, num_features: int, params: dict[str, Any]) -> int:
        return int_param(params, "num_samples", DEFAULT_SAMPLES, minimum=2)

    async def explain(self, task: AttributionTask) -> Attribution:
        params = task.params
        n_samples = self.cost(task.num_features, params)
        keep_prob = _float(params, "keep_prob", 0.5, 0.05, 0.95)
        ridge = _float(params, "ridge", 0.01, 0.0, 1e6)
        seed = int_param(params, "seed", 0, minimum=0)
        n = task.num_features
        rng = np.random.default_rng(seed)
        masks = rng.random((n_samples, n)) < keep_prob
        # Every feature must be both kept and removed somewhere, or its weight is unidentified.
        for i in range(n):
            if masks[:, i].all():
                masks[rng.integers(n_samples), i] = False
            if not masks[:, i].any():
                masks[rng.integers(n_samples), i] = True
        removals = [set(np.flatnonzero(~m).tolist()) for m in masks]
        rows = np.asarray(await task.score_removals(removals))  # (samples, response tokens)
        # the unperturbed prompt is a free extra sample: all features kept
        x = np.vstack([masks.astype(float), np.ones((1, n))])
        y = np.vstack([rows, np.asarray(task.baseline)[None, :]])
        weights, r2 = _ridge(x, y, ridge)  # (features, response tokens)
        return Attribution(
            seq_attr=weights.sum(axis=1).tolist(),
            token_attr=weights.T.tolist(),
            extra={"num_samples": n_samples, "surrogate_r2": r2},
        )


def _ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, float]:
    """Ridge regression with an unpenalized intercept; returns weights and the fit's R^2 on
    the summed response log-probability."""
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    gram = xc.T @ xc + penalty * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, xc.T @ yc)
    total = yc.sum(axis=1)
    resid = total - (xc @ weights).sum(axis=1)
    denom = float((total ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / denom if denom > 0 else 1.0
    return weights, r2


def _float(params: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ClientError(f"params.{name} must be a number in [{lo}, {hi}]")
    return float(value)
