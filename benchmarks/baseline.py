"""vLLM's own serving benchmark (``vllm.benchmarks.serve``), run as a reference.

Why: this client's numbers are only trustworthy if, on the same server and workload, they
agree with vLLM's harness (``vllm bench serve``). This module is the one place in the
package that imports vLLM (ruff's ban exempts it); it runs in its own process
(``python -m benchmarks.baseline OUT.json -- <vllm bench serve flags>``) so the client
process never loads torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def run_vllm_harness(flags: list[str]) -> dict[str, Any]:
    """Parse ``flags`` with vLLM's own ``add_cli_args`` and run its ``main``; its result."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    return main(parser.parse_args(flags))


def harness_flags(*, base_url: str, model: str, tokenizer: str, backend: str, endpoint: str,
                  concurrency: int, num_prompts: int, input_len: int, output_len: int,
                  seed: int, warmups: int, range_ratio: float = 0.0,
                  prompts_jsonl: str | None = None) -> list[str]:
    """vLLM harness flags for the workload this package calls ``--dataset random`` (with the
    same ``--random-range-ratio``), or, with ``prompts_jsonl``, for exactly the prompts and
    output lengths in that file, in its order (vLLM's ``custom`` dataset,
    ``{"prompt": ..., "output_tokens": N}`` per line, sent as the user message without a
    client-side chat template, as this client sends them). Per-request results are kept
    (``--save-detailed``) so that distributions, not only summaries, can be compared."""
    if prompts_jsonl is None:
        dataset = ["--dataset-name", "random", "--random-input-len", str(input_len),
                   "--random-output-len", str(output_len),
                   "--random-range-ratio", str(range_ratio)]
    else:
        dataset = ["--dataset-name", "custom", "--dataset-path", prompts_jsonl,
                   "--custom-output-len", "-1", "--skip-chat-template",
                   "--disable-shuffle"]
    return ["--backend", backend, "--base-url", base_url, "--endpoint", endpoint,
            "--model", model, "--tokenizer", tokenizer, *dataset,
            "--num-prompts", str(num_prompts),
            "--max-concurrency", str(concurrency), "--request-rate", "inf",
            "--ignore-eos", "--temperature", "0", "--seed", str(seed),
            "--num-warmups", str(warmups), "--disable-tqdm", "--save-detailed",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99"]


if __name__ == "__main__":
    out, rest = sys.argv[1], sys.argv[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    result = run_vllm_harness(rest)
    Path(out).write_text(json.dumps(result, default=str))
