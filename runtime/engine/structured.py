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
from collections.abc import Iterator
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
_TEXT_KEYS = ("pattern",)  # schema keywords that hold a regex
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


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
    check_bounds(kind, value[kind], PARAMETER)
    return value


def check_bounds(kind: str, spec: Any, where: str) -> None:
    """Refuse a constraint whose compilation could hold the engine's grammar compiler for
    long: too large, too many choices, or too many distinct bounded repetitions."""
    text = spec if isinstance(spec, str) else json.dumps(spec)
    if len(text) > MAX_SPEC_CHARS:
        raise ClientError(f"'{where}' is too large ({len(text)} characters; at most "
                          f"{MAX_SPEC_CHARS})")
    if kind == "choice" and isinstance(spec, list) and len(spec) > MAX_CHOICES:
        raise ClientError(f"'{where}.choice' has {len(spec)} entries; at most {MAX_CHOICES}")
    if kind in ("regex", "grammar", "structural_tag"):
        bounds = set(_quantifiers(text))
    elif kind == "json":
        bounds = set(_schema_bounds(spec))
    else:
        bounds = set()
    if len(bounds) > MAX_DISTINCT_BOUNDS:
        raise ClientError(
            f"'{where}' has {len(bounds)} distinct bounded repetitions (maxLength, maxItems, "
            f"{{m,n}}, ...); at most {MAX_DISTINCT_BOUNDS}: each costs seconds to compile")


def _quantifiers(text: str) -> Iterator[tuple[str, str]]:
    for m in _QUANTIFIER.finditer(text):
        if m.group(0) not in ("{0}", "{1}"):
            yield ("{}", m.group(0).replace(" ", ""))


def _schema_bounds(node: Any) -> Iterator[tuple[str, str]]:
    """Every bounded repetition in a JSON schema: length/count keywords and regex patterns."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in _LENGTH_KEYS and isinstance(value, int) and value > 1:
                    yield ("len", str(value))
                elif key in _TEXT_KEYS and isinstance(value, str):
                    yield from _quantifiers(value)
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))


def response_format_schema(response_format: Any) -> Any:
    """The JSON schema an OpenAI ``response_format`` asks for (None: none)."""
    if getattr(response_format, "type", None) != "json_schema":
        return None
    json_schema = getattr(response_format, "json_schema", None)
    return getattr(json_schema, "json_schema", None)
