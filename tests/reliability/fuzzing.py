"""Shared pieces of the property-based fuzz tests: strategies, cost caps, schema loading.

Why a module of its own: the fuzz tests aim generated requests at a real engine on a 2-core
machine, so every case goes through the same caps (a few output tokens, at most two choices)
and the same "known issue" rules; keeping them here keeps test_fuzz.py about the properties.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

DATA = Path(__file__).parent / "data"
V2_SPEC = DATA / "rest_predict_v2.yaml"
MODEL = "smollm2"
MAX_TOKENS_CAP = 8  # output tokens per generated request: keeps one case well under a second
N_CAP = 2  # choices / beams per generated request
SURROGATES = ("\ud800", "\udbff", "\udc00", "\udfff")  # unpaired: valid JSON escapes, not UTF-8

# Every sampling parameter the runtime documents for v2 and generate (docs/reference.md, "The
# v2 tensor and parameter contract"), and the OpenAI-only ones.
V2_PARAMETERS = (
    "max_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p", "stop",
    "stop_token_ids", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "ignore_eos", "include_stop_str_in_output", "skip_special_tokens",
    "spaces_between_special_tokens", "truncate_prompt_tokens", "bad_words", "logit_bias",
    "allowed_token_ids", "apply_chat_template",
)
SAMPLING_PARAMETERS = (*V2_PARAMETERS, "n", "best_of", "logprobs")
_TOKEN_LIMITS = ("max_tokens", "min_tokens", "max_completion_tokens", "max_output_tokens")
_CHOICE_LIMITS = ("n", "best_of")


def examples(default: int) -> int:
    """Examples per property, scaled by ``FUZZ_SCALE`` (e.g. 0.2 for a smoke run, 5 for a soak)."""
    return max(1, round(default * float(os.environ.get("FUZZ_SCALE", "1"))))


def fuzz_settings(max_examples: int) -> settings:
    """Hypothesis settings for cases sent to a live server: no deadline (the machine is shared
    and busy), no example database in the work tree, no health checks about slow generation."""
    return settings(
        max_examples=examples(max_examples),
        deadline=None,
        database=None,
        # CI runs a fixed example set (a red build must be reproducible); elsewhere every run
        # explores new examples. FUZZ_DERANDOMIZE=0/1 overrides either way.
        derandomize=os.environ.get("FUZZ_DERANDOMIZE", "1" if os.environ.get("CI") else "0")
        == "1",
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# ---------------------------------------------------------------- strategies

# Text that may carry unpaired surrogates (which st.text() never makes): JSON can escape them,
# UTF-8 cannot encode them, so they probe every place the server re-encodes a string.
any_char = st.characters(codec=None, exclude_categories=())
prompt_text = st.text(min_size=1, max_size=60)
fuzzy_text = st.one_of(
    st.text(max_size=40),
    st.text(any_char, max_size=20),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=8), st.sampled_from(SURROGATES),
              st.text(max_size=8)),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), fuzzy_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8,
)
token_ids = st.lists(st.integers(min_value=-3, max_value=60_000), max_size=4)
# Mostly in range for every float parameter (temperature, top_p, penalties), sometimes not.
near_floats = st.floats(min_value=-0.5, max_value=2.5, allow_nan=False)
_LIST_PARAMETERS = ("stop_token_ids", "allowed_token_ids", "bad_words", "logit_bias")


def _typed(name: str, scalar_only: bool) -> st.SearchStrategy[Any]:
    """A value of the type the parameter expects, within and just beyond its valid range."""
    if name in (*_TOKEN_LIMITS, "n", "best_of", "logprobs", "truncate_prompt_tokens"):
        return st.integers(min_value=-1, max_value=MAX_TOKENS_CAP)
    if name == "top_k":
        return st.integers(min_value=-2, max_value=100_000)
    if name == "seed":
        return st.integers(min_value=-(2**64), max_value=2**64)
    if name == "stop":
        return fuzzy_text if scalar_only else fuzzy_text | st.lists(fuzzy_text, max_size=3)
    if name == "bad_words":
        return st.lists(fuzzy_text, max_size=3)
    if name in ("stop_token_ids", "allowed_token_ids"):
        return token_ids
    if name == "logit_bias":
        return st.dictionaries(st.integers(-3, 60_000).map(str) | fuzzy_text,
                               st.floats(-200, 200, allow_nan=False), max_size=3)
    if name in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens",
                "spaces_between_special_tokens", "apply_chat_template"):
        return st.booleans()
    return near_floats


def parameters(*, wild: bool = True, nonfinite: bool = False, scalar_only: bool = False,
               openai: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """A sampling-parameter dict of up to three documented names with values of their type.

    ``wild`` adds random JSON values and unknown names; ``nonfinite`` adds NaN and infinities
    (only for clients that can send them); ``scalar_only`` keeps to what the v2 REST
    ``parameters`` object can hold (no lists or objects); ``openai`` adds its own names.
    """
    names = [n for n in (SAMPLING_PARAMETERS if openai else V2_PARAMETERS)
             if not (scalar_only and n in _LIST_PARAMETERS)]
    typed = st.lists(st.sampled_from(names), max_size=3, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: _typed(k, scalar_only) for k in keys}))
    if not wild:
        return typed
    values = json_values | st.floats() if nonfinite else json_values
    name = st.sampled_from(SAMPLING_PARAMETERS) | st.text(max_size=10)
    return st.tuples(typed, st.dictionaries(name, values, max_size=3)).map(
        lambda pair: {**pair[1], **pair[0]})


# ---------------------------------------------------------------- cost caps


def _number(value: Any) -> float | None:
    """The numeric value a lax validator (pydantic) would read, if any."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def cap_generation(params: dict[str, Any], *, always_bound: bool) -> None:
    """Cap output tokens and choices in place, so a generated case costs a few tokens.

    Values of the wrong type are left alone (they test validation); numbers above a cap are
    lowered; ``always_bound`` also sets ``max_tokens`` when no usable bound is present (the
    chat paths default to "up to the context", 2048 tokens here).
    """
    for key in _TOKEN_LIMITS:
        n = _number(params.get(key))
        if n is not None and (math.isnan(n) or n > MAX_TOKENS_CAP):
            params[key] = MAX_TOKENS_CAP
    for key in _CHOICE_LIMITS:
        n = _number(params.get(key))
        if n is not None and (math.isnan(n) or n > N_CAP):
            params[key] = N_CAP
    if always_bound:
        if all(params.get(k) is None for k in ("max_tokens", "max_completion_tokens")):
            params["max_tokens"] = MAX_TOKENS_CAP


# ---------------------------------------------------------------- schemas


def load_v2_spec() -> dict[str, Any]:
    """The Open Inference Protocol REST spec, made usable against a live server.

    Two derivations, neither changes what the spec allows: its paths spell parameters
    ``${MODEL_NAME}`` (a templating slip in the upstream file) and become ``{MODEL_NAME}``;
    the spec says the version is optional in the URL, so each versioned path also gets its
    unversioned twin (``/v2/models/{MODEL_NAME}/infer``, the route clients use).
    """
    raw = yaml.safe_load(V2_SPEC.read_text())
    paths: dict[str, Any] = {}
    for path, item in raw["paths"].items():
        path = path.replace("${", "{")
        paths[path] = item
        if "/versions/{MODEL_VERSION}" in path:
            twin = copy.deepcopy(item)
            twin["parameters"] = [p for p in twin.get("parameters", [])
                                  if p.get("name") != "MODEL_VERSION"]
            for op in twin.values():
                if isinstance(op, dict) and "operationId" in op:
                    op["operationId"] += "-unversioned"
            paths[path.replace("/versions/{MODEL_VERSION}", "")] = twin
    raw["paths"] = paths
    return raw


def has_surrogate(value: Any) -> bool:
    """Whether a request carries an unpaired surrogate anywhere (see KNOWN_ISSUES)."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


# A failure that matches one of these is a bug already reported, pinned by a strict xfail test
# in test_known_issues.py; the fuzz records it and goes on looking for new ones. Remove an
# entry when its test is flipped. FUZZ_STRICT=1 disables them all. Entries are
# (xfail test name, predicate(path, body, response text or stream error)), for example
#   ("test_unpaired_surrogate_is_a_client_error", lambda path, body, detail: has_surrogate(body))
# Empty: everything the fuzzing found so far is fixed (runtime commit 170df43).
KnownIssue = tuple[str, Callable[[str, Any, str], bool]]
KNOWN_ISSUES: list[KnownIssue] = []


def known_issue(path: str, body: Any, detail: str = "") -> str | None:
    """The name of the xfail test that pins this failure, or None when it is a new bug.
    ``detail`` is the response text (or the stream's error event)."""
    if os.environ.get("FUZZ_STRICT") == "1":
        return None
    for name, matches in KNOWN_ISSUES:
        if matches(path, body, detail):
            return name
    return None
