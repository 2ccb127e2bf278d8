"""Command-line flags shared by ``run`` and ``side-by-side``, and the ``run`` command itself.

Why shared: ``side-by-side`` is ``run`` against two servers it starts itself, so both take
the same load and workload flags and produce the same files.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.clients import APIS, MODEL_ORDERS, Sampling, Target
from benchmarks.load import Load
from benchmarks.metrics import parse_goodput
from benchmarks.records import RequestRecord
from benchmarks.report import environment, write_all
from benchmarks.runner import RunPlan, RunResult, run
from benchmarks.workload import Prompt, build_prompts, load_tokenizer


def _csv(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        return [kind(x) for x in text.split(",") if x.strip()]
    return parse


def add_load_flags(p: argparse.ArgumentParser) -> None:
    """Load, workload, sampling and output flags (``run`` and ``side-by-side``)."""
    g = p.add_argument_group("load")
    g.add_argument("--api", type=_csv(str), default=["openai-chat"],
                   help=f"comma list of: {', '.join(APIS)}")
    g.add_argument("--concurrency", type=_csv(int), default=None,
                   help="closed loop: comma list of concurrencies, e.g. 1,8,32")
    g.add_argument("--request-rate", type=_csv(float), default=None,
                   help="open loop: comma list of request rates (req/s), e.g. 2,8 (inf: all)")
    g.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma shape of inter-arrival times: 1 Poisson, <1 burstier")
    g.add_argument("--num-prompts", type=_csv(int), default=[32],
                   help="requests per load point: one number, or one per load (e.g. 8,24,48)")
    g.add_argument("--models", type=_csv(str), default=None, metavar="A,B,...",
                   help="spread the requests over these served names of each target (e.g. "
                   "LoRA adapters) on every API, instead of the one model")
    g.add_argument("--model-order", choices=MODEL_ORDERS, default="round-robin",
                   help="--models: in turn, or drawn at random with the point's seed")
    g.add_argument("--warmup", type=int, default=2,
                   help="warm-up requests per target and API (with --models, at least one "
                   "per name loads each adapter before the measurement)")
    g.add_argument("--repeats", type=int, default=1, help="repeats of every load point")
    g.add_argument("--seed", type=int, default=0, help="fixes prompts and arrival times")
    g.add_argument("--goodput", nargs="*", default=None, metavar="SLO",
                   help="SLOs for goodput, e.g. ttft:500 tpot:100 (ms)")
    g.add_argument("--request-timeout", type=float, default=600.0)
    g.add_argument("--cooldown", type=float, default=2.0,
                   help="idle seconds before each point (vLLM's CPU engine spins ~1 s after "
                        "its last request, slowing whichever server runs next)")
    w = p.add_argument_group("workload")
    w.add_argument("--dataset", choices=("random", "jsonl", "sharegpt"), default="random")
    w.add_argument("--dataset-path", default=None)
    w.add_argument("--input-len", type=int, default=128, help="random prompts: tokens in")
    w.add_argument("--output-len", type=int, default=64, help="tokens out (max_tokens)")
    w.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="random prompts: input and output lengths uniform in len * [1-r, 1+r] "
                        "(vLLM's flag); > 0 keeps closed-loop requests from ending in "
                        "lockstep, which makes TTFT medians stable")
    w.add_argument("--temperature", type=float, default=0.0)
    w.add_argument("--no-ignore-eos", action="store_true",
                   help="let requests stop at EOS (default: always produce --output-len)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, required=True, help="directory for the results")
    o.add_argument("--no-progress", action="store_true")
    o.add_argument("--no-plots", action="store_true")
    o.add_argument("--scrape-metrics", action="store_true",
                   help="while each point runs, sample the target's /metrics once a second "
                   "(waiting and running requests, KV-cache use, the runtime's admitted-waiting "
                   "gauge): metrics_samples.csv, per-point mean/max, autoscaling_curve.png")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags of ``run``: targets, model and tokenizer."""
    p.add_argument("--target", action="append", required=True, metavar="NAME=URL",
                   help="a server to drive (repeatable), e.g. runtime=http://127.0.0.1:8080")
    p.add_argument("--grpc", action="append", default=[], metavar="NAME=HOST:PORT",
                   help="gRPC address of a target, for --api v2-grpc")
    p.add_argument("--baseline", default=None,
                   help="the target the others are compared with (e.g. plain vLLM)")
    p.add_argument("--model", default="smollm2", help="served model name")
    p.add_argument("--tokenizer", required=True, help="model folder with the tokenizer")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="sent to every target as 'Authorization: Bearer KEY' (gRPC: the "
                   "'authorization' metadata); never written to the results")
    add_load_flags(p)


def plan_from(args: argparse.Namespace) -> RunPlan:
    """The :class:`RunPlan` the flags describe (validates them)."""
    if bool(args.concurrency) == bool(args.request_rate):
        raise SystemExit("give exactly one of --concurrency or --request-rate")
    for api in args.api:
        if api not in APIS:
            raise SystemExit(f"unknown --api {api!r}; choose from {', '.join(APIS)}")
    loads = ([Load(concurrency=c) for c in args.concurrency] if args.concurrency else
             [Load(rate=r, burstiness=args.burstiness) for r in args.request_rate])
    if len(args.num_prompts) not in (1, len(loads)):
        raise SystemExit("--num-prompts takes one number or one per load point")
    try:
        slos = parse_goodput(args.goodput)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    return RunPlan(apis=args.api, loads=loads, repeats=args.repeats, warmup=args.warmup,
                   seed=args.seed, slos_ms=slos, request_timeout_s=args.request_timeout,
                   cooldown_s=args.cooldown,
                   scrape_metrics=getattr(args, "scrape_metrics", False),
                   sampling=Sampling(temperature=args.temperature,
                                     ignore_eos=not args.no_ignore_eos))


def prompt_sets(args: argparse.Namespace, plan: RunPlan, tokenizer: Any
                ) -> tuple[dict[tuple[str, str, int], list[Prompt]], list[Prompt]]:
    """Distinct prompts per (API, point, repeat), shared by all targets, plus warm-up ones."""
    per_load = dict(zip((load.label for load in plan.loads),
                        args.num_prompts * len(plan.loads) if len(args.num_prompts) == 1
                        else args.num_prompts, strict=False))
    keys = [(api, load.label, r) for r in range(plan.repeats) for api in plan.apis
            for load in plan.loads]
    if args.dataset == "random":
        total = sum(per_load[k[1]] for k in keys)
        everything = build_prompts("random", tokenizer, num=total + plan.warmup,
                                   input_len=args.input_len, output_len=args.output_len,
                                   seed=args.seed, range_ratio=args.random_range_ratio)
        sets, at = {}, 0
        for k in keys:
            sets[k], at = everything[at:at + per_load[k[1]]], at + per_load[k[1]]
        return sets, everything[at:]
    sets = {k: build_prompts(args.dataset, tokenizer, num=per_load[k[1]],
                             input_len=args.input_len, output_len=args.output_len,
                             seed=args.seed + i, path=args.dataset_path)
            for i, k in enumerate(keys)}
    warm = build_prompts(args.dataset, tokenizer, num=max(plan.warmup, 1),
                         input_len=args.input_len, output_len=args.output_len,
                         seed=args.seed - 1, path=args.dataset_path)
    return sets, warm


def parse_targets(args: argparse.Namespace) -> list[Target]:
    grpc = dict(item.split("=", 1) for item in args.grpc)
    targets = []
    for item in args.target:
        name, sep, url = item.partition("=")
        if not sep or not url.startswith("http"):
            raise SystemExit(f"--target {item!r}: expected NAME=http://HOST:PORT")
        targets.append(Target(name=name, url=url.rstrip("/"), model=args.model,
                              grpc_url=grpc.get(name), models=tuple(args.models or ()),
                              model_order=args.model_order,
                              api_key=getattr(args, "api_key", None)))
    return targets


def config_dict(args: argparse.Namespace, plan: RunPlan) -> dict[str, Any]:
    return {"apis": plan.apis, "loads": [load.label for load in plan.loads],
            "num_prompts": args.num_prompts, "repeats": plan.repeats, "warmup": plan.warmup,
            "seed": plan.seed, "dataset": args.dataset, "dataset_path": args.dataset_path,
            "input_len": args.input_len, "output_len": args.output_len,
            "random_range_ratio": args.random_range_ratio,
            "temperature": plan.sampling.temperature, "ignore_eos": plan.sampling.ignore_eos,
            "burstiness": args.burstiness, "goodput_slos_ms": plan.slos_ms,
            "cooldown_s": plan.cooldown_s, "models": getattr(args, "models", None),
            "model_order": getattr(args, "model_order", None),
            "scrape_metrics": plan.scrape_metrics}


def execute(args: argparse.Namespace, targets: list[Target], tokenizer_path: str,
            extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], RunResult]:
    """Run the benchmark the flags describe against ``targets`` and write every output."""
    plan = plan_from(args)
    tokenizer = load_tokenizer(tokenizer_path)
    sets, warm = prompt_sets(args, plan, tokenizer)
    env = environment()
    started = time.time()
    result = run(targets, sets, warm, plan, tokenizer, progress=not args.no_progress)
    baseline = getattr(args, "baseline", None)
    others = [t.name for t in targets if t.name != baseline]
    doc: dict[str, Any] = {
        "config": config_dict(args, plan), "environment": env,
        "started_unix": started, "finished_unix": time.time(),
        "targets": [t.describe() for t in targets], "baseline": baseline,
        "target": others[0] if baseline and others else None,
        "warmup": result.warmup, "points": result.points, **(extra or {}),
    }
    doc["environment"]["loadavg_end"] = list(os.getloadavg())
    write_all(args.out, doc, result.records, result.origin,
              result.metrics_samples if plan.scrape_metrics else None)
    if not args.no_plots:
        from benchmarks.plots import write_plots

        doc["plots"] = write_plots(args.out, doc, result.records)
    return doc, result


def cmd_run(args: argparse.Namespace) -> int:
    """``python -m benchmarks run``."""
    targets = parse_targets(args)
    if args.baseline and args.baseline not in {t.name for t in targets}:
        raise SystemExit(f"--baseline {args.baseline} is not one of the targets")
    doc, _ = execute(args, targets, args.tokenizer)
    print((args.out / "summary.md").read_text())
    return 0 if all(p["failed"] == 0 for p in doc["points"]) else 1


def load_records(path: Path) -> list[RequestRecord]:
    """requests.jsonl back into records (times relative to the run start)."""
    import json

    return [RequestRecord.from_json(json.loads(line))
            for line in path.read_text().splitlines() if line.strip()]
