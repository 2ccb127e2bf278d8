"""The interface every attribution method implements, built-in or third-party.

Why a small interface: a method only decides *which* perturbed prompts to score (or, for a
white-box method, runs the model itself) and how to turn scores into one number per feature.
Tokenizing, feature building, talking to the predictor, budgets, faithfulness and rendering are
the server's job, so a plugin is a few dozen lines. See docs/explainer.md, "Writing a plugin".

A plugin is a subclass of ``ExplanationMethod`` registered under the entry-point group
``kserve_llm.explainer_methods``; the entry-point name is the ``method`` clients send.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from explainers.features import PreparedPrompt
from explainers.predictor import PredictorClient, ScoreStats

ALL_GRANULARITIES: frozenset[str] = frozenset({"token", "word", "sentence", "message"})


DEFAULT_IG_BATCH_TOKENS = 1024


@dataclass(frozen=True)
class MethodSettings:
    """Server-wide settings handed to every method when the server loads it.

    ``ig_batch_tokens`` (``--ig_batch_tokens``) bounds the memory of a white-box method: the
    most tokens (steps x sequence length) it runs through the model in one forward and
    backward pass (about 1.1-1.4 MiB each for SmolLM2-135M in float32).
    """

    model_dir: str
    tokenizer: Any
    ig_batch_tokens: int = DEFAULT_IG_BATCH_TOKENS


@dataclass
class AttributionTask:
    """One explanation to compute: the prompt with its features, the response, and a scorer.

    ``score_removals`` is the black-box primitive: give it sets of feature indices, get back
    the response log-probability (sum, and per response token) with those features removed.
    Pass all the sets you need in one call: they go to the predictor together and are batched.
    """

    prompt: PreparedPrompt
    response_ids: list[int]
    baseline: list[float]
    params: dict[str, Any]
    client: PredictorClient
    stats: ScoreStats

    @property
    def num_features(self) -> int:
        return len(self.prompt.features)

    @property
    def baseline_logprob(self) -> float:
        return float(sum(self.baseline))

    _memo: dict[frozenset[int], list[float]] = field(default_factory=dict, repr=False)

    async def score_removals(self, removals: Sequence[set[int]]) -> list[list[float]]:
        """Per response token log-probs with each set of features removed, in order.

        A removal set already scored for this explanation (by the method, or the empty set,
        which is the baseline) is answered from memory, not sent again.
        """
        self._memo.setdefault(frozenset(), list(self.baseline))
        keys = [frozenset(r) for r in removals]
        todo = list(dict.fromkeys(k for k in keys if k not in self._memo))
        rows = await self.client.score([self.prompt.without(set(k)) for k in todo],
                                       self.response_ids, self.stats)
        self._memo.update(zip(todo, rows, strict=True))
        return [self._memo[k] for k in keys]


@dataclass
class Attribution:
    """A method's result: one score per feature (positive: the feature raises the response's
    log-probability), optionally one row per response token, plus method-specific extras."""

    seq_attr: list[float]
    token_attr: list[list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ExplanationMethod(ABC):
    """Base class of attribution methods.

    Class attributes:
        name: the method name clients send (should equal the entry-point name).
        granularities: the feature granularities the method supports.
        description: one line shown in the method listing.
        params_doc: the ``params`` the method reads, name -> meaning (for the listing).
    """

    name: ClassVar[str]
    granularities: ClassVar[frozenset[str]] = ALL_GRANULARITIES
    description: ClassVar[str] = ""
    params_doc: ClassVar[dict[str, str]] = {}

    def __init__(self, settings: MethodSettings) -> None:
        self.settings = settings

    def cost(self, num_features: int, params: dict[str, Any]) -> int:
        """Forward passes the method will need; the server refuses requests over budget.

        Raise ``explainers.errors.ClientError`` here for invalid ``params``.
        """
        return num_features

    @abstractmethod
    async def explain(self, task: AttributionTask) -> Attribution:
        """Compute the attribution of ``task.response_ids`` to ``task.prompt.features``."""

    def describe(self) -> dict[str, Any]:
        """The method as listed by ``GET /v1/explainer/methods``."""
        return {"name": self.name, "granularities": sorted(self.granularities),
                "description": self.description, "params": dict(self.params_doc)}
