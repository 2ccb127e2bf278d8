"""``python -m benchmarks adapters``: output throughput with traffic spread over LoRA adapters,
against the base model alone, same load, one server, one run.

Why one server and two interleaved targets: the question is what serving several adapters
from one engine costs, not how two servers differ. One runtime starts with every adapter
loaded (``--enable-lora --max-loras N --lora-modules ...``); the target ``base`` sends every
request to the base model, the target ``adapters`` spreads the same prompts over the adapters
(round-robin by default, ``--model-order random``). The runner alternates the two point by
point (who goes first rotates), so drift from other load on the machine hits both alike, and
the comparison is ``adapters / base`` per API and load, with intervals over ``--repeats``.

Both targets run on a LoRA-enabled engine: ``base`` includes whatever LoRA support costs a
request without an adapter. Before the load, each name answers one greedy request; an adapter
that answers like the base model is reported (it would make the comparison meaningless).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks.cli import add_load_flags, execute
from benchmarks.clients import Target
from benchmarks.compare import fmt_ci
from benchmarks.servers import runtime_server, server_info
from deployment.processes import free_port

DEFAULT_ENGINE_ARGS = ["--dtype=float32", "--enforce-eager", "--max-model-len=2048"]
CHECK_PROMPT = "My favourite food is"  # the example adapters change this answer at once


def adapter_folders(root: str | Path) -> dict[str, Path]:
    """``{name: folder}`` for every sub-folder of ``root`` holding a peft adapter (sorted)."""
    found = {p.name: p.resolve() for p in sorted(Path(root).iterdir())
             if (p / "adapter_config.json").is_file()}
    if not found:
        raise SystemExit(f"no adapter (a folder with adapter_config.json) under {root}; "
                         "`python -m deployment adapters --base MODEL --out DIR` builds four")
    return found


def lora_args(adapters: dict[str, Path]) -> list[str]:
    """vLLM's flags that load every adapter at start: rank from their configs, all in a batch."""
    rank = max(int(json.loads((p / "adapter_config.json").read_text())["r"])
               for p in adapters.values())
    return ["--enable-lora", f"--max-lora-rank={rank}", f"--max-loras={len(adapters)}",
            "--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]


def greedy_answers(url: str, names: list[str], max_tokens: int = 16) -> dict[str, str]:
    """One greedy completion of :data:`CHECK_PROMPT` per served name."""
    out = {}
    with httpx.Client(base_url=url, timeout=300) as client:
        for name in names:
            r = client.post("/openai/v1/completions", json={
                "model": name, "prompt": CHECK_PROMPT, "max_tokens": max_tokens,
                "temperature": 0})
            r.raise_for_status()
            out[name] = r.json()["choices"][0]["text"]
    return out


def add_flags(p: argparse.ArgumentParser) -> None:
    """Flags of ``adapters``: model, adapters, server start-up, then the load flags."""
    p.add_argument("--model-dir", required=True, help="base model folder (weights, tokenizer)")
    p.add_argument("--adapters", required=True,
                   help="folder whose sub-folders are peft adapters, served under their "
                   "folder names (python -m deployment adapters --out DIR builds four)")
    p.add_argument("--served-model-name", default="smollm2")
    p.add_argument("--startup-timeout", type=float, default=600.0)
    add_load_flags(p)


def summary(doc: dict[str, Any], spread: dict[str, int]) -> str:
    """The headline: adapters / base output throughput per API and load point."""
    lines = ["# LoRA adapters against the base model: output throughput", "",
             f"Requests of the `adapters` target per adapter: {dict(sorted(spread.items()))}.",
             "", "| API | load | base out tok/s | adapters out tok/s | ratio adapters/base | "
             "repeats | valid |", "|---|---|---|---|---|---|---|"]
    for r in doc.get("comparison") or []:
        lines.append(f"| {r['api']} | {r['point']} | {r['base_output_throughput']:.1f} | "
                     f"{r['adapters_output_throughput']:.1f} | "
                     f"{fmt_ci(r['output_throughput_ratio'], r['output_throughput_ratio_ci'])}"
                     f" | {r['repeats']} | {'yes' if r['valid'] else 'NO'} |")
    if doc.get("adapters_answer_like_base"):
        lines += ["", "WARNING: these adapters answered like the base model: "
                  f"{doc['adapters_answer_like_base']}"]
    return "\n".join(lines) + "\n"


def cmd_adapters(args: argparse.Namespace, engine_args: list[str]) -> int:
    """Start one runtime with the adapters, run base and adapters alternately, report."""
    adapters = adapter_folders(args.adapters)
    if args.models:
        unknown = sorted(set(args.models) - set(adapters))
        if unknown:
            raise SystemExit(f"--models {unknown} are not adapters under {args.adapters}")
        adapters = {n: adapters[n] for n in args.models}
    engine = [*(engine_args or DEFAULT_ENGINE_ARGS), *lora_args(adapters)]
    model_dir, name = str(Path(args.model_dir).resolve()), args.served_model_name
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    server = runtime_server(model_dir, name, engine, free_port(), free_port(), out / "logs",
                            args.startup_timeout)
    try:
        print(f"starting runtime: {' '.join(server.argv)}", flush=True)
        server.start()
        print(f"runtime ready after {server.ready_s:.1f} s", flush=True)
        answers = greedy_answers(server.url, [name, *adapters])
        like_base = [a for a in adapters if answers[a] == answers[name]]
        grpc = f"127.0.0.1:{server.grpc_port}"
        targets = [Target("base", server.url, name, grpc_url=grpc),
                   Target("adapters", server.url, name, grpc_url=grpc,
                          models=tuple(adapters), model_order=args.model_order)]
        args.baseline, args.models = "base", list(adapters)
        doc, result = execute(args, targets, model_dir, extra={
            "servers": {"runtime": server_info(server)}, "engine_args": engine,
            "adapters": {n: str(p) for n, p in adapters.items()}, "answers": answers,
            "adapters_answer_like_base": like_base, "plot_goals": [None, None]})
    finally:
        server.stop()
    spread = Counter(r.model for r in result.records if r.target == "adapters")
    text = summary(doc, dict(spread))
    (out / "adapters.md").write_text(text)
    (out / "adapters.json").write_text(json.dumps(
        {"comparison": doc.get("comparison"), "requests_per_adapter": spread,
         "answers": answers, "adapters_answer_like_base": like_base}, indent=2))
    print(text)
    ok = all(p["failed"] == 0 for p in doc["points"]) and not like_base
    return 0 if ok else 1
