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

With ``--url`` (and ``--grpc-url``, ``--api-key``) the command drives a runtime that is
already running instead of starting one: the adapters are the names given with ``--models``,
or else every model card of the server's ``/openai/v1/models`` whose ``parent`` is the base
model's served name; ``--model-dir`` still gives the tokenizer, and the report records the
server's URL instead of a command.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks.cli import add_load_flags, execute
from benchmarks.clients import Target, bearer
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


def greedy_answers(url: str, names: list[str], max_tokens: int = 16,
                   api_key: str | None = None) -> dict[str, str]:
    """One greedy completion of :data:`CHECK_PROMPT` per served name."""
    out = {}
    with httpx.Client(base_url=url, timeout=300, headers=bearer(api_key)) as client:
        for name in names:
            r = client.post("/openai/v1/completions", json={
                "model": name, "prompt": CHECK_PROMPT, "max_tokens": max_tokens,
                "temperature": 0})
            r.raise_for_status()
            out[name] = r.json()["choices"][0]["text"]
    return out


def served_adapters(url: str, base: str, api_key: str | None = None) -> list[str]:
    """The LoRA adapters a running server serves on top of ``base``: the cards of its
    ``/openai/v1/models`` whose ``parent`` is ``base`` (vLLM's model cards), in its order."""
    r = httpx.get(f"{url}/openai/v1/models", headers=bearer(api_key), timeout=30)
    if r.status_code != 200:
        raise SystemExit(f"{url}/openai/v1/models answered {r.status_code}: {r.text[:300]}")
    return [card["id"] for card in r.json().get("data") or ()
            if card.get("parent") == base and card.get("id") != base]


def add_flags(p: argparse.ArgumentParser) -> None:
    """Flags of ``adapters``: model, adapters, server start-up or address, then the load
    flags."""
    p.add_argument("--model-dir", required=True, help="base model folder (weights, tokenizer)")
    p.add_argument("--adapters", default=None,
                   help="folder whose sub-folders are peft adapters, served under their "
                   "folder names (python -m deployment adapters --out DIR builds four); "
                   "required unless --url")
    p.add_argument("--served-model-name", default="smollm2")
    p.add_argument("--startup-timeout", type=float, default=600.0)
    s = p.add_argument_group("a running server (instead of starting one)")
    s.add_argument("--url", default=None, metavar="URL",
                   help="HTTP root of a running runtime with the adapters loaded, e.g. "
                   "http://127.0.0.1:8080; its adapters: --models, else the cards of its "
                   "/openai/v1/models whose parent is --served-model-name")
    s.add_argument("--grpc-url", default=None, metavar="HOST:PORT",
                   help="its gRPC address (needed for --api v2-grpc, v2-grpc-stream)")
    s.add_argument("--api-key", default=None, metavar="KEY",
                   help="its API key, sent as 'Authorization: Bearer KEY' (gRPC: the "
                   "'authorization' metadata); never written to the results")
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


def _measure(args: argparse.Namespace, url: str, grpc: str | None, names: list[str],
             model_dir: str, extra: dict[str, Any]) -> tuple[dict[str, Any], Any, dict[str, str],
                                                            list[str]]:
    """The greedy check, then base against the adapters spread, on one server; the run's
    document and result, the answers, and the adapters that answered like the base model."""
    base = args.served_model_name
    answers = greedy_answers(url, [base, *names], api_key=args.api_key)
    like_base = [a for a in names if answers[a] == answers[base]]
    targets = [Target("base", url, base, grpc_url=grpc, api_key=args.api_key),
               Target("adapters", url, base, grpc_url=grpc, models=tuple(names),
                      model_order=args.model_order, api_key=args.api_key)]
    args.baseline, args.models = "base", list(names)
    doc, result = execute(args, targets, model_dir, extra={
        **extra, "answers": answers, "adapters_answer_like_base": like_base,
        "plot_goals": [None, None]})
    return doc, result, answers, like_base


def _against_running(args: argparse.Namespace, engine_args: list[str], model_dir: str
                     ) -> tuple[dict[str, Any], Any, dict[str, str], list[str]]:
    """``--url``: the adapters of a running server, no start, no stop."""
    if engine_args:
        raise SystemExit("engine arguments (after --) are for a server this command starts; "
                         "with --url the server is already running")
    if {"v2-grpc", "v2-grpc-stream"} & set(args.api) and not args.grpc_url:
        raise SystemExit("--api v2-grpc / v2-grpc-stream against --url needs --grpc-url")
    url = args.url.rstrip("/")
    served = served_adapters(url, args.served_model_name, args.api_key)
    names = list(args.models) if args.models else served
    unknown = sorted(set(names) - set(served))
    if unknown:
        raise SystemExit(f"--models {unknown} are not adapters of {args.served_model_name} on "
                         f"{url} (it serves {served})")
    if not names:
        raise SystemExit(f"{url} serves no adapter of {args.served_model_name}")
    folders = adapter_folders(args.adapters) if args.adapters else {}
    server = {"url": url, "grpc_url": args.grpc_url, "started_by_benchmark": False,
              "api_key": "(set)" if args.api_key else None, "adapters_served": served}
    return _measure(args, url, args.grpc_url, names, model_dir, {
        "servers": {"runtime": server}, "engine_args": None,
        "adapters": {n: str(folders[n]) if n in folders else None for n in names}})


def _start_and_measure(args: argparse.Namespace, engine_args: list[str], model_dir: str
                       ) -> tuple[dict[str, Any], Any, dict[str, str], list[str]]:
    """Without ``--url``: one runtime with every adapter under ``--adapters``, stopped after."""
    if args.adapters is None:
        raise SystemExit("give --adapters DIR (adapters to load) or --url (a running server)")
    if args.grpc_url or args.api_key:
        raise SystemExit("--grpc-url and --api-key describe a running server: give --url")
    adapters = adapter_folders(args.adapters)
    if args.models:
        unknown = sorted(set(args.models) - set(adapters))
        if unknown:
            raise SystemExit(f"--models {unknown} are not adapters under {args.adapters}")
        adapters = {n: adapters[n] for n in args.models}
    engine = [*(engine_args or DEFAULT_ENGINE_ARGS), *lora_args(adapters)]
    server = runtime_server(model_dir, args.served_model_name, engine, free_port(),
                            free_port(), args.out / "logs", args.startup_timeout)
    try:
        print(f"starting runtime: {' '.join(server.argv)}", flush=True)
        server.start()
        print(f"runtime ready after {server.ready_s:.1f} s", flush=True)
        return _measure(args, server.url, f"127.0.0.1:{server.grpc_port}", list(adapters),
                        model_dir, {"servers": {"runtime": server_info(server)},
                                    "engine_args": engine,
                                    "adapters": {n: str(p) for n, p in adapters.items()}})
    finally:
        server.stop()


def cmd_adapters(args: argparse.Namespace, engine_args: list[str]) -> int:
    """Start one runtime with the adapters (or use the one at ``--url``), run base and
    adapters alternately, report."""
    model_dir = str(Path(args.model_dir).resolve())
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    measure = _against_running if args.url else _start_and_measure
    doc, result, answers, like_base = measure(args, engine_args, model_dir)
    spread = Counter(r.model for r in result.records if r.target == "adapters")
    text = summary(doc, dict(spread))
    (out / "adapters.md").write_text(text)
    (out / "adapters.json").write_text(json.dumps(
        {"comparison": doc.get("comparison"), "requests_per_adapter": spread,
         "answers": answers, "adapters_answer_like_base": like_base}, indent=2))
    print(text)
    ok = all(p["failed"] == 0 for p in doc["points"]) and not like_base
    return 0 if ok else 1
