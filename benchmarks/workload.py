"""Prompts for a benchmark: random ones of exact token lengths, a JSONL file, or ShareGPT.

Why exact lengths checked with the model's tokenizer: a 128-token prompt that is really 140
tokens shifts TTFT and makes runs incomparable. Random prompts are built from whole-word
vocabulary entries (" word" tokens that re-encode to themselves), so the prompt text encodes
back to exactly the requested number of tokens; every prompt is checked and the build fails
loudly if one is off. ``seed`` fixes the list, so every target and run sees the same prompts.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_WORD = re.compile(r"^ [a-z]{3,12}$")


@dataclass(frozen=True)
class Prompt:
    """One prompt: its text, its length in tokens (no special tokens), and tokens to ask for."""

    text: str
    input_tokens: int
    output_len: int


def load_tokenizer(path: str | Path) -> Any:
    """The model's Hugging Face tokenizer (local folder, offline)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` without special tokens (vLLM's convention for output counts)."""
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def _word_pool(tokenizer: Any) -> list[int]:
    pool = []
    for token_id in range(min(tokenizer.vocab_size, 50_000)):
        word = tokenizer.decode([token_id])
        if _WORD.match(word) and tokenizer.encode(word, add_special_tokens=False) == [token_id]:
            pool.append(token_id)
    if len(pool) < 100:
        raise RuntimeError("tokenizer has too few whole-word tokens for random prompts")
    return pool


def random_prompts(
    tokenizer: Any, num: int, input_len: int, output_len: int, seed: int,
    range_ratio: float = 0.0,
) -> list[Prompt]:
    """``num`` prompts, reproducible from ``seed``, of exactly ``input_len`` tokens each, or
    with ``range_ratio`` r > 0 (vLLM's ``--random-range-ratio``), input and output lengths
    drawn uniformly from len * [1 - r, 1 + r]: requests then end at different times instead
    of in lockstep, so TTFTs are not a few engine-step plateaus."""
    if input_len < 1 or output_len < 1:
        raise ValueError("input and output lengths must be positive")
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError("range ratio must be in [0, 1)")
    rng = random.Random(seed)
    pool = _word_pool(tokenizer)
    # The prompt's first word loses its leading space: it must be one token without it too.
    firsts = [t for t in pool
              if len(tokenizer.encode(tokenizer.decode([t]).lstrip(),
                                      add_special_tokens=False)) == 1]

    def length(n: int) -> int:
        if not range_ratio:
            return n
        return rng.randint(max(1, round(n * (1 - range_ratio))), round(n * (1 + range_ratio)))

    prompts = []
    for _ in range(num):
        n_in, n_out = length(input_len), length(output_len)
        for _attempt in range(20):
            ids = [rng.choice(firsts)] + [rng.choice(pool) for _ in range(n_in - 1)]
            text = tokenizer.decode(ids).lstrip()
            if count_tokens(tokenizer, text) == n_in:
                break
        else:
            raise RuntimeError(f"could not build a prompt of exactly {n_in} tokens")
        prompts.append(Prompt(text, n_in, n_out))
    return prompts


def jsonl_prompts(
    path: str | Path, tokenizer: Any, num: int, output_len: int, seed: int
) -> list[Prompt]:
    """Prompts from a JSONL file: one object per line with ``prompt`` (or ``text``) and an
    optional ``output_len`` / ``max_tokens``; sampled with ``seed``, repeated if too few."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            obj = json.loads(line)
            text = obj.get("prompt", obj.get("text"))
            if not isinstance(text, str):
                raise ValueError(f"{path}: each line needs a string 'prompt' or 'text'")
            rows.append((text, int(obj.get("output_len", obj.get("max_tokens", output_len)))))
    return _sample(rows, tokenizer, num, seed)


def sharegpt_prompts(
    path: str | Path, tokenizer: Any, num: int, output_len: int | None, seed: int
) -> list[Prompt]:
    """Prompts from ShareGPT JSON: the first human turn is the prompt; the reply's length in
    tokens is the output length unless ``output_len`` is given. Filtered as vLLM filters
    ShareGPT (prompt and reply at least 4 tokens, prompt <= 1024, both <= 2048)."""
    data = json.loads(Path(path).read_text())
    rows = []
    for conv in data:
        turns = conv.get("conversations") or conv.get("conversation") or []
        if len(turns) < 2:
            continue
        text, reply = turns[0].get("value", ""), turns[1].get("value", "")
        n_in, n_out = count_tokens(tokenizer, text), count_tokens(tokenizer, reply)
        wanted = output_len or n_out
        if n_in < 4 or wanted < 4 or n_in > 1024 or n_in + wanted > 2048:
            continue
        rows.append((text, wanted))
    if not rows:
        raise ValueError(f"{path}: no usable ShareGPT conversations")
    return _sample(rows, tokenizer, num, seed)


def _sample(
    rows: list[tuple[str, int]], tokenizer: Any, num: int, seed: int
) -> list[Prompt]:
    if not rows:
        raise ValueError("no prompts in the dataset")
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    picked = [rows[order[i % len(order)]] for i in range(num)]
    return [Prompt(text, count_tokens(tokenizer, text), n_out) for text, n_out in picked]


def build_prompts(
    dataset: str, tokenizer: Any, *, num: int, input_len: int, output_len: int, seed: int,
    path: str | None = None, range_ratio: float = 0.0,
) -> list[Prompt]:
    """The prompt list for ``--dataset random|jsonl|sharegpt``."""
    if dataset == "random":
        return random_prompts(tokenizer, num, input_len, output_len, seed, range_ratio)
    if path is None:
        raise ValueError(f"--dataset {dataset} needs --dataset-path")
    if dataset == "jsonl":
        return jsonl_prompts(path, tokenizer, num, output_len, seed)
    if dataset == "sharegpt":
        return sharegpt_prompts(path, tokenizer, num, output_len, seed)
    raise ValueError(f"unknown dataset {dataset!r}")
