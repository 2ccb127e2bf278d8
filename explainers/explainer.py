"""The explanation pipeline, independent of KServe: request in, explanation JSON out.

Why separate from the server: it is the whole behaviour of the ``:explain`` route (validation,
features, the response to explain, the method, faithfulness, HTML) and can be exercised
without ``import kserve``; ``explainers.server`` only adapts it to a ``kserve.Model``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from explainers.errors import ClientError
from explainers.faithfulness import deletion_test, deletion_test_cost
from explainers.features import longest_token_chars, prepare_prompt
from explainers.heatmap import render_heatmap
from explainers.methods.base import AttributionTask, ExplanationMethod
from explainers.predictor import PredictorClient, ScoreStats
from explainers.request import ExplainRequest, int_param, parse_request, split_instances

DEFAULT_MAX_TOKENS = 64


@dataclass
class Limits:
    """Server-side caps a request cannot raise (each is a command-line flag).

    ``max_budget``: forward passes per explanation, counting the baseline, the method and the
    deletion test. ``max_prompt_tokens``: tokens of the rendered prompt plus the response (the
    sequence every forward pass scores), checked before any feature is built.
    ``max_instances``: explanations per request body. ``max_request_budget``: forward passes
    of all the explanations of one body together (``None``: ``max_budget``), checked before
    any predictor call.
    """

    max_budget: int = 1024
    max_features: int = 1024
    max_new_tokens: int = 256
    max_prompt_tokens: int = 2048
    max_instances: int = 8
    max_request_budget: int | None = None


@dataclass
class Plan:
    """One explanation checked and costed, before any predictor call."""

    req: ExplainRequest
    method: ExplanationMethod
    prompt: Any
    passes: int


class Explainer:
    """Explains the predictor's answers with the loaded methods."""

    def __init__(self, tokenizer: Any, client: PredictorClient,
                 methods: dict[str, ExplanationMethod], limits: Limits | None = None) -> None:
        self.tokenizer = tokenizer
        self.client = client
        self.methods = methods
        self.limits = limits or Limits()
        self.longest_token = longest_token_chars(tokenizer)

    def describe(self) -> list[dict[str, Any]]:
        """The loaded methods, for the listing route."""
        return [m.describe() | {"name": name} for name, m in sorted(self.methods.items())]

    async def explain_body(self, body: Any) -> dict[str, Any]:
        """Answer an explain request body: one object, or KServe's ``{"instances": [...]}``."""
        objects = split_instances(body)
        if len(objects) > self.limits.max_instances:
            raise ClientError(f"'instances' holds {len(objects)} explain requests; the limit is "
                              f"{self.limits.max_instances} (--max_instances)")
        requests = [parse_request(obj) for obj in objects]
        for req in requests:
            self._method(req)  # refuse unknown methods before any work
        plans = [await self._plan(req) for req in requests]
        limit = self.limits.max_request_budget or self.limits.max_budget
        total = sum(p.passes for p in plans)
        if total > limit:
            raise ClientError(
                f"the request's {len(plans)} explanations need {total} forward passes together "
                f"({', '.join(str(p.passes) for p in plans)}); the limit is {limit} "
                f"(--max_request_budget); send fewer instances or lower params.budget")
        return {"explanations": [await self._run(p) for p in plans]}

    def _response_ids(self, response: str, room: int) -> list[int]:
        """The response's token ids; 400 when prompt and response exceed the token limit."""
        limit = self.limits.max_prompt_tokens
        if len(response) > max(room, 0) * self.longest_token:
            raise ClientError(f"the response has {len(response)} characters: with the prompt it "
                              f"cannot fit in {limit} tokens (--max_prompt_tokens)")
        ids = list(self.tokenizer(response, add_special_tokens=False)["input_ids"])
        if len(ids) > room:
            raise ClientError(f"the prompt and the response have {limit - room + len(ids)} "
                              f"tokens together; the limit is {limit} (--max_prompt_tokens)")
        return ids

    def _method(self, req: ExplainRequest) -> ExplanationMethod:
        method = self.methods.get(req.method)
        if method is None:
            raise ClientError(f"unknown method {req.method!r}; available: "
                              f"{', '.join(sorted(self.methods))}")
        if req.granularity not in method.granularities:
            raise ClientError(f"method {req.method!r} does not support granularity "
                              f"{req.granularity!r}; it supports "
                              f"{', '.join(sorted(method.granularities))}")
        return method

    async def explain(self, req: ExplainRequest) -> dict[str, Any]:
        """One explanation."""
        return await self._run(await self._plan(req))

    async def _plan(self, req: ExplainRequest) -> Plan:
        """Every check that needs no predictor: method, prompt, features, forward passes."""
        method = self._method(req)
        limits = self.limits
        # tokenizing and building features is CPU work: off the event loop, after a length
        # check that refuses an oversized prompt before any feature is built
        prompt = await asyncio.to_thread(
            prepare_prompt, self.tokenizer, prompt=req.prompt, messages=req.messages,
            granularity=req.granularity, max_tokens=limits.max_prompt_tokens,
            longest_token=self.longest_token)
        n = len(prompt.features)
        budget = int_param(req.params, "budget", limits.max_budget, minimum=1,
                           maximum=limits.max_budget)
        if n > limits.max_features:
            raise ClientError(f"the prompt has {n} features at granularity "
                              f"{req.granularity!r}; the limit is {limits.max_features} "
                              f"(--max_features); use a coarser granularity")
        cost = method.cost(n, req.params)
        check = deletion_test_cost(n, req.params)
        total = 1 + cost + check
        if total > budget:
            raise ClientError(
                f"method {req.method!r} needs {cost} forward passes for {n} features at "
                f"granularity {req.granularity!r}; with the baseline (1) and the deletion test "
                f"({check}) that is {total}, over the budget of {budget}; use a coarser "
                f"granularity, lower params.faithfulness_trials or raise params.budget (at "
                f"most {limits.max_budget}, --max_budget)")
        return Plan(req=req, method=method, prompt=prompt, passes=total)

    async def _run(self, plan: Plan) -> dict[str, Any]:
        """The explanation of a checked request (the predictor's calls start here)."""
        started = time.perf_counter()
        req, method, prompt, limits = plan.req, plan.method, plan.prompt, self.limits
        n = len(prompt.features)
        stats = ScoreStats()
        response = req.response
        room = limits.max_prompt_tokens - len(prompt.ids)
        if response is None:
            if room < 1:
                raise ClientError(f"the prompt has {len(prompt.ids)} tokens: no room for an "
                                  f"answer within {limits.max_prompt_tokens} tokens "
                                  f"(--max_prompt_tokens)")
            max_tokens = int_param(req.params, "max_new_tokens", DEFAULT_MAX_TOKENS,
                                   maximum=limits.max_new_tokens)
            response = await self.client.generate(prompt.ids, min(max_tokens, room))
            if not response.strip():
                raise ClientError("the predictor's answer is empty; pass a 'response' to explain")
        response_ids = await asyncio.to_thread(self._response_ids, response, room)
        [baseline] = await self.client.score([prompt.ids], response_ids, stats)
        task = AttributionTask(prompt=prompt, response_ids=response_ids, baseline=baseline,
                               params=req.params, client=self.client, stats=stats)
        attribution = await method.explain(task)
        if len(attribution.seq_attr) != n:
            raise RuntimeError(f"method {req.method!r} returned {len(attribution.seq_attr)} "
                               f"scores for {n} features")
        faithfulness = await deletion_test(task, attribution.seq_attr)
        out: dict[str, Any] = {
            "method": req.method,
            "granularity": req.granularity,
            "input_features": [f.to_json() for f in prompt.features],
            "response": response,
            "output_tokens": [
                {"text": self.tokenizer.decode([tok]), "logprob": lp}
                for tok, lp in zip(response_ids, baseline, strict=True)],
            "seq_attr": [float(x) for x in attribution.seq_attr],
            "baseline_logprob": float(sum(baseline)),
            "faithfulness": faithfulness,
        }
        if attribution.token_attr is not None:
            out["token_attr"] = attribution.token_attr
        if attribution.extra:
            out["method_info"] = attribution.extra
        out["stats"] = stats.to_json() | {
            "wall_ms": round((time.perf_counter() - started) * 1000, 1)}
        if req.html:
            out["html"] = await asyncio.to_thread(
                render_heatmap, prompt, out["seq_attr"], method=req.method,
                granularity=req.granularity, response=response, faithfulness=faithfulness)
        return out
