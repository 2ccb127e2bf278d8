"""``python -m benchmarks {run,compare,side-by-side,adapters,startup,frontend-cpu}``.

Why subcommands: ``run`` drives servers that are already up (a cluster, a port-forward);
``side-by-side`` starts this runtime and plain vLLM itself for a like-for-like comparison;
``compare`` recomputes the overhead table from finished runs; ``adapters`` starts one runtime
with LoRA adapters (or drives one already running, ``--url``) and compares traffic spread over
them with the base model alone;
``startup`` times each server's start alone, alternately, several times;
``frontend-cpu`` measures the serving process's own CPU per 1000 streamed tokens, per
protocol, against plain vLLM's API server.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import adapters, cli, frontend_cpu, sidebyside, startup
from benchmarks.compare import compare_points, comparison_markdown
from deployment.processes import stop_on_sigterm


def cmd_compare(args: argparse.Namespace) -> int:
    """Merge the points of one or more run.json files and compare target with baseline."""
    points = []
    for d in args.runs:
        points += json.loads((Path(d) / "run.json").read_text())["points"]
    rows = compare_points(points, args.target, args.baseline)
    if not rows:
        raise SystemExit(f"no load point has both {args.target!r} and {args.baseline!r}")
    table = comparison_markdown(rows, args.target, args.baseline)
    out = Path(args.out or args.runs[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(rows, indent=2))
    (out / "compare.md").write_text(table)
    from benchmarks.plots import overhead

    overhead(rows, args.target, args.baseline, out / "overhead_ratio.png")
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    argv = list(sys.argv[1:] if argv is None else argv)
    engine_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, engine_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_run_flags(sub.add_parser("run", help="drive running servers"))
    sidebyside.add_flags(sub.add_parser(
        "side-by-side", help="start this runtime and plain vLLM, run, stop, report",
        description="Engine arguments for both servers go after `--`."))
    adapters.add_flags(sub.add_parser(
        "adapters", help="one runtime with LoRA adapters: spread over them vs the base model",
        description="Engine arguments go after `--` (the LoRA flags are added); with --url "
        "the runtime is already running and nothing is started."))
    startup.add_flags(sub.add_parser(
        "startup", help="time to ready: this runtime against plain vLLM, alternating starts",
        description="Engine arguments for both servers go after `--`."))
    frontend_cpu.add_flags(sub.add_parser(
        "frontend-cpu", help="the server process's own CPU per 1000 streamed tokens, per "
        "protocol, against plain vLLM's", description="Engine arguments for both servers go "
        "after `--` (default: " + " ".join(frontend_cpu.DEFAULT_ENGINE_ARGS) + ")."))
    c = sub.add_parser("compare", help="overhead table from finished runs")
    c.add_argument("runs", nargs="+", help="run directories (with run.json)")
    c.add_argument("--target", default="runtime")
    c.add_argument("--baseline", default="vllm")
    c.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.command == "run":
        return cli.cmd_run(args)
    if args.command == "side-by-side":
        return sidebyside.cmd_side_by_side(args, engine_args)
    if args.command == "adapters":
        return adapters.cmd_adapters(args, engine_args)
    if args.command == "startup":
        return startup.cmd_startup(args, engine_args)
    if args.command == "frontend-cpu":
        return frontend_cpu.cmd_frontend_cpu(args, engine_args)
    return cmd_compare(args)


if __name__ == "__main__":
    sys.exit(main())
