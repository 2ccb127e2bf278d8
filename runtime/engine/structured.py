"""Constraints on decoding (vLLM's ``structured_outputs``) as every protocol sends them.

Why here: the OpenAI routes take vLLM's ``structured_outputs`` object and ``response_format``;
v2 REST, the generate extension, KServe v1 and gRPC take the same ``structured_outputs``
parameter, as an object where the transport allows one and as a JSON string everywhere (gRPC
parameters are scalars). This module turns either spelling into the one object vLLM's request
models validate, so the same constraint means the same thing on every protocol, and it bounds
what a constraint may cost to compile before the engine sees it.

What a constraint costs: xgrammar (vLLM's default backend) compiles each new grammar once, in
the engine process, on a thread pool of ``(cores + 1) // 2`` threads (one thread on 2 cores)
with no timeout; a request waits for its grammar and a structured request behind it waits for
the pool. Conversion is quick, but each distinct bounded repetition (a ``maxLength`` of 1000,
a regex ``{1,3000}``) costs 1-3 s to compile on this machine, so a 1 KB schema with 20 distinct
``maxLength`` values held the pool for 51 s (docs/structured-outputs.md). vLLM bounds regex
*parsing* with a timeout (``VLLM_REGEX_COMPILATION_TIMEOUT_S``) and JSON nesting depth, not
compilation; the bounds below keep one request's compilation to seconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from runtime.errors import ClientError
from runtime.limits import load_json

PARAMETER = "structured_outputs"
# vLLM's StructuredOutputsParams: exactly one kind, plus its options.
KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
OPTIONS = ("disable_any_whitespace", "disable_additional_properties", "whitespace_pattern")
DESCRIPTION = ("object, or the same object as a JSON string: vLLM's structured outputs, "
               "exactly one of json (a JSON schema), regex, choice (list of strings), grammar "
               "(EBNF or Lark), json_object (true)")

# Bounds on one request's constraints (measured costs in docs/structured-outputs.md).
MAX_SPEC_CHARS = 64 * 1024  # a schema, regex or grammar, serialized
MAX_DISTINCT_BOUNDS = 8  # distinct bounded repetitions ({m,n}, maxLength, maxItems, ...)
MAX_CHOICES = 1024
_LENGTH_KEYS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties",
                "maxProperties")
_REGEX_KEYS = ("pattern",)  # keys whose value is a regex (schemas; structural tag "regex")
_GRAMMAR_KEYS = ("grammar",)  # keys whose value is a grammar (structural tag "grammar")
_SCHEMA_KEYS = ("schema", "json_schema")  # a structural tag's schema, maybe as a JSON string
# Regex and EBNF repetitions ({n}, {m,n}, {m,}, {,n}: whitespace allowed, some backends take
# forms others refuse), Lark's ranges (~ n, ~ m..n), and length keywords written in a
# grammar's text (llguidance's Lark takes inline JSON schemas). Possessive quantifiers: with
# optional digits, "\s*(\d*)\s*" backtracks quadratically ("{" and 60,000 spaces: 171 s).
_QUANTIFIER = re.compile(r"\{\s*+(\d*+)\s*+(?:,\s*+(\d*+)\s*+)?\}")
_LARK_RANGE = re.compile(r"~\s*+(\d++)(?:\s*+\.\.\s*+(\d++))?")
_LENGTH_TEXT = re.compile(r'"(' + "|".join(_LENGTH_KEYS) + r')"\s*+:\s*+"?\s*+([-+0-9.eE]++)')

Constraint = tuple[str, Any, str]  # (kind, spec, where the client gave it)
Bound = tuple[str, Any, Any]  # one distinct bounded repetition, normalized


def decode(value: Any) -> dict[str, Any]:
    """The ``structured_outputs`` request parameter as vLLM's object (a dict).

    Accepts the object itself or a JSON string of it; checks the kinds (exactly one) and the
    bounds; leaves the meaning (is this a valid schema, regex, grammar?) to vLLM's own
    validation, which answers 400 for what it cannot compile."""
    if isinstance(value, str):
        value = load_json(value, f"parameter '{PARAMETER}'")
    if not isinstance(value, dict):
        raise ClientError(f"parameter '{PARAMETER}' must be an object (or a JSON string of "
                          f"one) with one of {', '.join(KINDS[:5])}; got {type(value).__name__}")
    unknown = sorted(set(value) - set(KINDS) - set(OPTIONS))
    if unknown:
        raise ClientError(f"parameter '{PARAMETER}' has unknown key(s) {', '.join(unknown)}; "
                          f"accepted: {', '.join((*KINDS, *OPTIONS))}")
    given = [k for k in KINDS if value.get(k) is not None]
    if len(given) != 1:
        raise ClientError(
            f"parameter '{PARAMETER}' must give exactly one kind of constraint "
            f"({', '.join(KINDS[:5])}); got {', '.join(given) if given else 'none'}")
    kind = given[0]
    spec = value[kind]
    if kind == "choice":
        if not isinstance(spec, list) or not spec or not all(isinstance(c, str) for c in spec):
            raise ClientError(f"'{PARAMETER}.choice' must be a non-empty list of strings")
    elif kind == "json_object":
        if spec is not True:
            raise ClientError(f"'{PARAMETER}.json_object' must be true")
    elif kind == "json":
        if isinstance(spec, str):
            spec = load_json(spec, f"'{PARAMETER}.json'")
        if not isinstance(spec, dict | bool):
            raise ClientError(f"'{PARAMETER}.json' must be a JSON schema (an object), got "
                              f"{type(spec).__name__}")
        value = {**value, "json": spec}
    elif not isinstance(spec, str) or not spec:
        raise ClientError(f"'{PARAMETER}.{kind}' must be a non-empty string")
    constraints: list[Constraint] = [(kind, value[kind], PARAMETER)]
    if isinstance(value.get("whitespace_pattern"), str):
        constraints.append(("regex", value["whitespace_pattern"],
                            f"{PARAMETER}.whitespace_pattern"))
    check_all(constraints)
    return value


def check_bounds(kind: str, spec: Any, where: str) -> None:
    """Refuse a constraint whose compilation could hold the engine's grammar compiler for
    long: too large, too many choices, or too many distinct bounded repetitions."""
    check_all([(kind, spec, where)])


def check_all(constraints: Iterable[Constraint]) -> None:
    """``check_bounds`` for all the constraints of one request together: each is bounded in
    size, and their distinct bounded repetitions are counted as one set, because a request's
    constraints compile into one grammar (tools in ``auto`` mode and a ``response_format``
    become one structural tag)."""
    bounds: set[Bound] = set()
    sources: list[str] = []
    for kind, spec, where in constraints:
        text = spec if isinstance(spec, str) else json.dumps(spec)
        if len(text) > MAX_SPEC_CHARS:
            raise ClientError(f"'{where}' is too large ({len(text)} characters; at most "
                              f"{MAX_SPEC_CHARS})")
        if kind == "choice" and isinstance(spec, list) and len(spec) > MAX_CHOICES:
            raise ClientError(f"'{where}.choice' has {len(spec)} entries; at most {MAX_CHOICES}")
        found = set(_bounds(kind, spec))
        if found - bounds and where not in sources:
            sources.append(where)
        bounds |= found
    if len(bounds) > MAX_DISTINCT_BOUNDS:
        named = " and ".join(f"'{w}'" for w in sources)
        raise ClientError(
            f"{named} {'has' if len(sources) == 1 else 'have together'} {len(bounds)} distinct "
            f"bounded repetitions (maxLength, maxItems, {{m,n}}, ...); at most "
            f"{MAX_DISTINCT_BOUNDS}: each costs seconds to compile")


def request_constraints(request: Any) -> list[Constraint]:
    """Every constraint an OpenAI chat or completion request carries in its own fields: each
    kind of its ``structured_outputs`` (and the ``whitespace_pattern`` regex), and its
    ``response_format`` of every type vLLM 0.32 accepts (``json_schema``, ``structural_tag``
    in both shapes; ``json_object`` and ``text`` compile nothing of the client's). Tools are
    the caller's (``vllm_tools.check``): whether they constrain depends on ``tool_choice``."""
    out: list[Constraint] = []
    so = getattr(request, PARAMETER, None)
    if so is not None:
        for kind in KINDS:
            spec = getattr(so, kind, None)
            if spec is not None:
                out.append((kind, spec, PARAMETER))
        pattern = getattr(so, "whitespace_pattern", None)
        if isinstance(pattern, str):
            out.append(("regex", pattern, f"{PARAMETER}.whitespace_pattern"))
    rf = getattr(request, "response_format", None)
    rf_type = rf.get("type") if isinstance(rf, dict) else getattr(rf, "type", None)
    if rf_type == "json_schema":
        json_schema = getattr(rf, "json_schema", None)
        schema = getattr(json_schema, "json_schema", None)
        if schema is not None:
            out.append(("json", schema, "response_format"))
    elif rf_type == "structural_tag":
        # the object vLLM serializes into its structural tag (structured_outputs_from_response_format)
        dump = getattr(rf, "model_dump", None)
        out.append(("structural_tag", dump(by_alias=True) if dump else rf, "response_format"))
    return out


def _bounds(kind: str, spec: Any) -> Iterator[Bound]:
    """The distinct bounded repetitions one constraint compiles into."""
    if kind in ("choice", "json_object"):
        return  # literal alternatives; a fixed grammar
    if kind == "regex":
        yield from _regex_bounds(spec) if isinstance(spec, str) else ()
    elif kind in ("json", "structural_tag") and isinstance(spec, str):
        yield from _json_text_bounds(spec)
    elif kind in ("json", "structural_tag"):
        yield from _tree_bounds(spec)
    elif isinstance(spec, str):  # grammar, and anything else given as text
        yield from _text_bounds(spec)
    else:
        yield from _tree_bounds(spec)


def _number(value: Any) -> float | None:
    """A bound's value as a number, however it was written (100, 100.0, "100"): some backends
    coerce what others refuse, so every spelling counts; 100 and 100.0 are one bound."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float):
        return value
    return None


def _repetition(low: Any, high: Any) -> Iterator[Bound]:
    """One {low,high} repetition (high None: exactly low; -1: unbounded) if it is bounded
    above 1 (``?``, ``*``, ``+`` and ``{0}``/``{1}`` cost nothing)."""
    lo, hi = _number(low) or 0, _number(high)
    if hi is None:
        hi = lo
    if lo > 1 or hi > 1:
        yield ("{}", lo, hi)


def _regex_bounds(text: str) -> Iterator[Bound]:
    for m in _QUANTIFIER.finditer(text):
        low, high = m.group(1), m.group(2)
        if not low and not high:
            continue  # "{}" or "{,}": not a repetition
        yield from _repetition(low, high if high is None else (high or -1))


def _text_bounds(text: str) -> Iterator[Bound]:
    """A grammar (EBNF, Lark) or any text no parser read: regex/EBNF repetitions, Lark ranges,
    and length keywords of inline JSON schemas."""
    yield from _regex_bounds(text)
    for m in _LARK_RANGE.finditer(text):
        yield from _repetition(m.group(1), m.group(2))
    for m in _LENGTH_TEXT.finditer(text):
        yield from _length(m.group(2))


def _length(value: Any) -> Iterator[Bound]:
    n = _number(value)
    if n is not None and n > 1:
        yield ("len", n, None)


def _json_text_bounds(text: str) -> Iterator[Bound]:
    """A schema or structural tag given as a JSON string: its tree, or (not JSON: vLLM will
    refuse it) its text."""
    try:
        value = load_json(text, "constraint")
    except ClientError:
        yield from _text_bounds(text)
    else:
        yield from _tree_bounds(value)


def _tree_bounds(node: Any) -> Iterator[Bound]:
    """Every bounded repetition in a JSON schema or an xgrammar structural tag (which holds
    schemas, regexes, grammars and ``repeat`` formats): the length/count keywords (as numbers
    of any spelling), regexes (``pattern`` values, ``patternProperties`` keys), grammars, a
    structural tag's ``repeat`` bounds, and schemas given as JSON strings."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
            continue
        if not isinstance(item, dict):
            continue
        if item.get("type") == "repeat":  # xgrammar's RepeatFormat: content{min,max}
            yield from _repetition(item.get("min"), item.get("max"))
        for key, value in item.items():
            if isinstance(value, dict):
                if key == "patternProperties":
                    for pattern in value:
                        yield from _regex_bounds(str(pattern))
                stack.append(value)
            elif isinstance(value, list):
                stack.append(value)
            elif key in _LENGTH_KEYS:
                yield from _length(value)
            elif not isinstance(value, str):
                continue
            elif key in _REGEX_KEYS:
                yield from _regex_bounds(value)
            elif key in _GRAMMAR_KEYS:
                yield from _text_bounds(value)
            elif key in _SCHEMA_KEYS:
                yield from _json_text_bounds(value)
