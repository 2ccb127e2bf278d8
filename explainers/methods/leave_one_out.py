"""Leave-one-out: remove each feature in turn and measure how much the response's
log-probability falls.

Why: it is the simplest faithful black-box attribution and the same quantity as Captum's
``FeatureAblation`` with an empty baseline. All ``n`` perturbed prompts (plus nothing else: the
server already has the unperturbed score) go to the predictor in one batch.
"""

from __future__ import annotations

from typing import Any

from explainers.methods.base import Attribution, AttributionTask, ExplanationMethod


class LeaveOneOut(ExplanationMethod):
    """attr_i = log p(response | prompt) - log p(response | prompt without feature i)."""

    name = "leave_one_out"
    description = ("Black box: the drop in the response's log-probability when each feature "
                   "is removed (one forward pass per feature, all batched).")

    def cost(self, num_features: int, params: dict[str, Any]) -> int:
        return num_features

    async def explain(self, task: AttributionTask) -> Attribution:
        rows = await task.score_removals([{i} for i in range(task.num_features)])
        base = task.baseline
        seq_attr = [task.baseline_logprob - sum(row) for row in rows]
        # token_attr[t][i]: feature i's effect on response token t
        token_attr = [[base[t] - row[t] for row in rows] for t in range(len(base))]
        return Attribution(seq_attr=seq_attr, token_attr=token_attr)
