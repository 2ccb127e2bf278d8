"""Speed benchmark: leave-one-out through this explainer vs Captum's ``RemoteLLMAttribution``.

Why: the explainer's point is that it sends all perturbations to vLLM together so they are
batched, where Captum's remote mode sends one request per perturbation, one after another.
Both explain the same ~60-word prompt at word granularity, with the same response, against the
same predictor; the script prints both wall times, the ratio, and how closely the two
attributions agree (they compute the same quantity).

    python -m explainers.benchmark --predictor_url http://127.0.0.1:8080 \\
        --model_dir .models/smollm2 [--explainer_url http://127.0.0.1:8090]

Without ``--explainer_url`` it starts ``python -m explainers`` itself and stops it at the end.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx

PROMPT = (
    "The museum opens at nine on weekdays and at ten on weekends. Tickets cost twelve euros "
    "for adults and are free for children under six. Guided tours in English start every hour "
    "from the main hall, and the cafe on the top floor closes at five. Photography is allowed "
    "everywhere except in the special exhibition. On which days does the museum open at ten?"
)
RESPONSE = "The museum opens at ten on weekends."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_explainer(predictor_url: str, model_dir: str, model: str) -> tuple[Any, str]:
    port = _free_port()
    host = predictor_url.split("://", 1)[-1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "explainers", f"--model_name={model}",
         f"--predictor_host={host}", f"--http_port={port}", f"--model_dir={model_dir}",
         "--methods=leave_one_out"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the explainer exited during start-up")
        try:
            if httpx.get(f"{url}/v1/models/{model}", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("the explainer did not become ready")


def prompt_of(words: int | None) -> str:
    """:data:`PROMPT`, or its last ``words`` words (the question and the facts before it).

    Why a shorter prompt exists: the test suite runs the command end to end, and the work
    grows with the word count; the documented measurement uses the whole prompt."""
    if words is None:
        return PROMPT
    if words < 1:
        raise SystemExit("--words must be at least 1")
    return " ".join(PROMPT.split()[-words:])


def run_explainer(url: str, model: str, prompt: str = PROMPT) -> tuple[float, dict[str, Any]]:
    """One leave-one-out explanation through the explainer: (seconds, explanation)."""
    body = {"messages": [{"role": "user", "content": prompt}], "response": RESPONSE,
            "method": "leave_one_out", "granularity": "word", "html": False}
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/models/{model}:explain", json=body, timeout=600)
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    return elapsed, r.json()["explanations"][0]


def run_captum(predictor_url: str, model: str, tokenizer: Any,
               features: list[dict[str, Any]], prompt: str = PROMPT
               ) -> tuple[float, list[float]]:
    """The same explanation with Captum's RemoteLLMAttribution + VLLMProvider."""
    from captum.attr import FeatureAblation, RemoteLLMAttribution, TextTemplateInput
    from captum.attr._core.remote_provider import VLLMProvider

    rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
    start = rendered.index(prompt)
    values, cursor = [], 0
    for f in features:  # each value carries the whitespace before its word, as tokens do
        values.append(prompt[cursor:f["char_span"][1]])
        cursor = f["char_span"][1]
    template = (rendered[:start] + "{}" * len(values) + prompt[cursor:]
                + rendered[start + len(prompt):])
    provider = VLLMProvider(api_url=f"{predictor_url}/v1", model_name=model)
    attr = RemoteLLMAttribution(
        FeatureAblation(RemoteLLMAttribution.placeholder_model), tokenizer, provider)
    inp = TextTemplateInput(template, values=values, baselines=[""] * len(values))
    t0 = time.perf_counter()
    result = attr.attribute(inp, target=RESPONSE)
    return time.perf_counter() - t0, result.seq_attr.tolist()


def main(argv: list[str] | None = None) -> None:
    """Run both a few times and print the medians and the ratio (JSON on the last line)."""
    p = argparse.ArgumentParser(prog="python -m explainers.benchmark", description=__doc__)
    p.add_argument("--predictor_url", required=True)
    p.add_argument("--model_dir", required=True)
    p.add_argument("--model_name", default="smollm2")
    p.add_argument("--explainer_url", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--words", type=int, default=None,
                   help="explain only the prompt's last N words (default: all of it)")
    args = p.parse_args(argv)
    prompt = prompt_of(args.words)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    predictor = args.predictor_url.rstrip("/")
    proc = None
    url = args.explainer_url
    if url is None:
        proc, url = _start_explainer(predictor, args.model_dir, args.model_name)
    try:
        _, warm = run_explainer(url, args.model_name, prompt)  # warm-up (tokenizer, connections)
        ours, theirs = [], []
        captum_attr: list[float] = []
        for _ in range(args.repeats):
            seconds, explanation = run_explainer(url, args.model_name, prompt)
            ours.append(seconds)
            seconds, captum_attr = run_captum(predictor, args.model_name, tokenizer,
                                              explanation["input_features"], prompt)
            theirs.append(seconds)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    ours_attr = explanation["seq_attr"]
    diff = max(abs(a - b) for a, b in zip(ours_attr, captum_attr, strict=True))
    result = {
        "words": len(prompt.split()), "features": len(ours_attr),
        "explainer_s": statistics.median(ours), "captum_remote_s": statistics.median(theirs),
        "speedup": statistics.median(theirs) / statistics.median(ours),
        "explainer_forward_passes": explanation["stats"]["forward_passes"],
        "captum_forward_passes": len(captum_attr) + 1,
        "explainer_runs_s": ours, "captum_runs_s": theirs,
        "max_abs_attr_diff": diff, "repeats": args.repeats,
    }
    print(f"{result['words']} words, {result['features']} features (leave-one-out, word)")
    print(f"explainer (batched):      {result['explainer_s']:.2f} s "
          f"({result['explainer_forward_passes']} forward passes incl. faithfulness)")
    print(f"captum RemoteLLMAttribution: {result['captum_remote_s']:.2f} s")
    print(f"speed-up: {result['speedup']:.2f}x; max |attr difference|: {diff:.3g}")
    per_ours = result["explainer_s"] / result["explainer_forward_passes"]
    per_theirs = result["captum_remote_s"] / result["captum_forward_passes"]
    print(f"per forward pass: explainer {per_ours * 1000:.0f} ms, captum {per_theirs * 1000:.0f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
