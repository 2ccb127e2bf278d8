"""Turning a prompt into token ids and interpretable features (token, word, sentence, message).

Why at the token-id level: the explainer removes a feature by deleting its token ids from the
prompt, never by re-joining strings, so every perturbed prompt keeps the same template tokens
and the response tokens line up with the unperturbed prompt. Only what the user sent becomes a
feature: template text (role markers, the default system message the SmolLM2 template inserts)
stays in every perturbed prompt.
"""

from __future__ import annotations

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


def prepare_prompt(tokenizer: Any, *, prompt: str | None, messages: list[dict[str, str]] | None,
                   granularity: str) -> PreparedPrompt:
    """Render the prompt (chat template for messages), tokenize it, and build its features."""
    if messages is not None:
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
        regions = _locate_messages(text, messages)
        segments = [Segment(m["role"], m["content"]) for m in messages]
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    else:
        assert prompt is not None
        text = prompt
        regions = [(0, len(prompt))]
        segments = [Segment(None, prompt)]
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]

    features: list[Feature] = []
    for msg_index, (start, end) in enumerate(regions):
        content = text[start:end]
        message = msg_index if messages is not None else None
        if granularity == "token":
            for pos, (a, b) in enumerate(offsets):
                a, b = max(a, start), min(b, end)
                if b > a and content[a - start:b - start].strip():
                    features.append(Feature(text[a:b], (a - start, b - start), message, [pos]))
            continue
        for a, b in split_spans(content, granularity):
            features.append(Feature(content[a:b], (a, b), message))
        _assign_tokens(features, offsets, start, message)
    features = [f for f in features if f.token_indices]
    if not features:
        raise ClientError("the prompt is empty: it has no text to attribute")
    return PreparedPrompt(ids=ids, features=features, segments=segments)


def _assign_tokens(features: list[Feature], offsets: list[tuple[int, int]], start: int,
                   message: int | None) -> None:
    """Give each token to the first feature of this message whose characters it overlaps."""
    own = [f for f in features if f.message == message and not f.token_indices]
    for pos, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        for f in own:
            fs, fe = f.char_span[0] + start, f.char_span[1] + start
            if a < fe and b > fs:
                f.token_indices.append(pos)
                break


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
