"""Turning a prompt into token ids and interpretable features (token, word, sentence, message).

Why at the token-id level: the explainer removes a feature by deleting its token ids from the
prompt, never by re-joining strings, so every perturbed prompt keeps the same template tokens
and the response tokens line up with the unperturbed prompt. Only what the user sent becomes a
feature: template text (role markers, the default system message the SmolLM2 template inserts)
stays in every perturbed prompt.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any

from explainers.errors import ClientError

# A sentence runs to the first [.!?] run that is followed by whitespace or the end, or to a
# newline; "3.14" and "e.g.x" do not split.
_SENTENCE = re.compile(r"(?:[^.!?\n]|[.!?]+(?=[^\s.!?]))+[.!?]*|[.!?]+")
_WORD = re.compile(r"\S+")


@dataclass
class Feature:
    """One unit of the prompt that gets an attribution score.

    ``char_span`` is relative to ``message``'s content (or to the prompt string when the
    request had no messages); ``token_indices`` are positions in ``PreparedPrompt.ids``.
    """

    text: str
    char_span: tuple[int, int]
    message: int | None
    token_indices: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "char_span": list(self.char_span),
                               "num_tokens": len(self.token_indices)}
        if self.message is not None:
            out["message"] = self.message
        return out


@dataclass
class Segment:
    """A piece of user text as it appears in the heatmap (one message, or the raw prompt)."""

    role: str | None
    text: str


@dataclass
class PreparedPrompt:
    """The prompt's token ids, its features, and the user text they came from."""

    ids: list[int]
    features: list[Feature]
    segments: list[Segment]

    def without(self, removed: set[int]) -> list[int]:
        """The prompt ids with the tokens of the features whose indices are in ``removed``."""
        drop = {t for i in removed for t in self.features[i].token_indices}
        return [tok for pos, tok in enumerate(self.ids) if pos not in drop]


def split_spans(text: str, granularity: str) -> list[tuple[int, int]]:
    """Character spans of the words, sentences, or whole message in ``text`` (trimmed)."""
    if granularity == "word":
        return [m.span() for m in _WORD.finditer(text)]
    if granularity == "sentence":
        spans = []
        for m in _SENTENCE.finditer(text):
            start, end = m.span()
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            if end > start:
                spans.append((start, end))
        return spans
    if granularity == "message":
        stripped = text.strip()
        if not stripped:
            return []
        start = text.index(stripped)
        return [(start, start + len(stripped))]
    raise ValueError(f"split_spans does not handle {granularity!r}")


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token can cover: the longest vocabulary entry.

    Why: a text longer than ``max_tokens * longest_token_chars`` characters must have more than
    ``max_tokens`` tokens, so an oversized prompt is refused before it is tokenized at all.
    (Byte-level vocabularies spell each byte as one character, so an entry is never shorter
    than the text it covers.)
    """
    return max((len(t) for t in tokenizer.get_vocab()), default=1)


def prepare_prompt(tokenizer: Any, *, prompt: str | None, messages: list[dict[str, str]] | None,
                   granularity: str, max_tokens: int | None = None,
                   longest_token: int | None = None) -> PreparedPrompt:
    """Render the prompt (chat template for messages), tokenize it, and build its features.

    With ``max_tokens``, a prompt of more tokens (template included) is refused with a 400
    before any feature is built; with ``longest_token`` too (``longest_token_chars``), a text
    that cannot fit is refused before it is even tokenized. Building the features costs
    O(tokens log features).
    """
    if messages is not None:
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
    else:
        assert prompt is not None
        text = prompt
    if max_tokens is not None and longest_token and len(text) > max_tokens * longest_token:
        raise ClientError(f"the prompt has {len(text)} characters, more than {max_tokens} "
                          f"tokens can hold; the limit is {max_tokens} tokens "
                          f"(--max_prompt_tokens)")
    if messages is not None:
        regions = _locate_messages(text, messages)
        segments = [Segment(m["role"], m["content"]) for m in messages]
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    else:
        regions = [(0, len(text))]
        segments = [Segment(None, text)]
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    if max_tokens is not None and len(ids) > max_tokens:
        what = " (chat template included)" if messages is not None else ""
        raise ClientError(f"the prompt has {len(ids)} tokens{what}; the limit is {max_tokens} "
                          f"(--max_prompt_tokens)")
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
    if granularity == "token":
        features = _token_features(text, regions, offsets, messages is not None)
    else:
        features = []
        for msg_index, (start, end) in enumerate(regions):
            message = msg_index if messages is not None else None
            features.extend(Feature(text[start + a:start + b], (a, b), message)
                            for a, b in split_spans(text[start:end], granularity))
        _assign_tokens(features, offsets, regions)
    features = [f for f in features if f.token_indices]
    if not features:
        raise ClientError("the prompt is empty: it has no text to attribute")
    return PreparedPrompt(ids=ids, features=features, segments=segments)


def _overlapping(spans_end: list[int], spans_start: list[int], a: int, b: int) -> range:
    """Indices of the sorted, disjoint spans that overlap the characters ``[a, b)``."""
    first = bisect.bisect_right(spans_end, a)
    last = bisect.bisect_left(spans_start, b, lo=first)
    return range(first, last)


def _token_features(text: str, regions: list[tuple[int, int]], offsets: list[tuple[int, int]],
                    chat: bool) -> list[Feature]:
    """One feature per token with visible user text, its span clipped to its message."""
    starts, ends = [r[0] for r in regions], [r[1] for r in regions]
    found: list[tuple[int, int, Feature]] = []
    for pos, (a, b) in enumerate(offsets):
        for r in _overlapping(ends, starts, a, b):
            start, end = regions[r]
            ca, cb = max(a, start), min(b, end)
            if cb > ca and text[ca:cb].strip():
                found.append((r, pos, Feature(text[ca:cb], (ca - start, cb - start),
                                              r if chat else None, [pos])))
    found.sort(key=lambda item: item[:2])  # message by message, in token order
    return [f for _, _, f in found]


def _assign_tokens(features: list[Feature], offsets: list[tuple[int, int]],
                   regions: list[tuple[int, int]]) -> None:
    """Give each token to the first feature of each message whose characters it overlaps.

    ``features`` are in text order and disjoint, so the candidates for a token are found by
    bisection instead of by scanning every feature.
    """
    region_start = {i: start for i, (start, _) in enumerate(regions)}
    starts = [f.char_span[0] + region_start[f.message or 0] for f in features]
    ends = [f.char_span[1] + region_start[f.message or 0] for f in features]
    for pos, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        seen: set[int | None] = set()
        for i in _overlapping(ends, starts, a, b):
            if features[i].message not in seen:
                seen.add(features[i].message)
                features[i].token_indices.append(pos)


def _locate_messages(text: str, messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Where each message's content sits in the rendered chat template, in order."""
    regions = []
    cursor = 0
    for i, m in enumerate(messages):
        content = m["content"]
        pos = text.find(content, cursor) if content else cursor
        if pos < 0:
            stripped = content.strip()
            pos = text.find(stripped, cursor)
            if pos < 0:
                raise ClientError(f"the chat template changed messages[{i}] beyond recognition")
            content = stripped
        regions.append((pos, pos + len(content)))
        cursor = pos + len(content)
    return regions
