"""Run ``python -m runtime`` under tracemalloc, dumping snapshots at intervals; compare two.

Why: RSS sampled from outside (scripts/soak.py) shows *that* the server process grows, not
*what* grows. Python's own ``tracemalloc`` attributes live allocations to the lines that made
them; two snapshots taken on a plateau of steady traffic, compared, name the lines whose
memory keeps increasing. This is a wrapper rather than a runtime option because it is a
diagnosis tool with a cost (tracemalloc slows every allocation of the traced process and
holds its own bookkeeping in memory), not something a deployment should be able to switch on.

    python scripts/memtrace.py run --out DIR --after 240 --every 300 -- --model_name=m ...
    python scripts/memtrace.py compare DIR/snap-0300.pickle DIR/snap-3600.pickle --top 25

Only the server (front-end) process is traced; the engine processes vLLM starts are not.
"""

from __future__ import annotations

import argparse
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path


def _dump_loop(out: Path, every: float, started: float, after: float, frames: int) -> None:
    """Start tracing ``after`` seconds in, then write ``snap-SSSSS.pickle`` (seconds since the
    process started) at once and every ``every`` seconds."""
    time.sleep(after)
    tracemalloc.start(frames)
    while True:
        elapsed = int(time.monotonic() - started)
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)])
        snapshot.dump(str(out / f"snap-{elapsed:05d}.pickle"))
        current, peak = tracemalloc.get_traced_memory()
        with (out / "traced.tsv").open("a") as fh:
            fh.write(f"{elapsed}\t{current}\t{peak}\n")
        time.sleep(every)


def run(args: argparse.Namespace) -> None:
    """Start the dumper thread (it starts tracing later), then run the runtime as ``python -m runtime``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threading.Thread(target=_dump_loop, args=(out, args.every, time.monotonic(), args.after,
                                              args.frames),
                     name="memtrace", daemon=True).start()
    sys.argv = ["runtime", *args.runtime_args]
    runpy.run_module("runtime", run_name="__main__", alter_sys=True)


def compare(args: argparse.Namespace) -> None:
    """Print the allocation sites whose live memory grew most from ``first`` to ``second``."""
    first = tracemalloc.Snapshot.load(args.first)
    second = tracemalloc.Snapshot.load(args.second)
    stats = second.compare_to(first, args.key_type)
    total = sum(s.size_diff for s in stats)
    print(f"total traced change: {total / 1024:+.1f} KiB over {len(stats)} sites")
    for stat in stats[:args.top]:
        print(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  "
              f"(now {stat.size / 1024:.1f} KiB)")
        for line in stat.traceback.format(limit=args.lines, most_recent_first=True):
            print("    " + line.strip())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the runtime under tracemalloc")
    r.add_argument("--out", required=True, help="folder for snap-*.pickle and traced.tsv")
    r.add_argument("--every", type=float, default=300.0, help="seconds between snapshots")
    r.add_argument("--after", type=float, default=240.0, help="seconds before tracing starts "
                   "(after start-up and warm-up: tracing the imports would take minutes, and "
                   "only what is allocated later can be what keeps growing)")
    r.add_argument("--frames", type=int, default=12, help="traceback depth kept per block")
    r.add_argument("runtime_args", nargs=argparse.REMAINDER,
                   help="-- then the runtime's own arguments")
    c = sub.add_parser("compare", help="sites that grew between two snapshots")
    c.add_argument("first")
    c.add_argument("second")
    c.add_argument("--top", type=int, default=20)
    c.add_argument("--lines", type=int, default=6, help="frames shown per site")
    c.add_argument("--key-type", default="traceback", choices=["traceback", "lineno", "filename"])
    args = p.parse_args(argv)
    if args.cmd == "run":
        if args.runtime_args[:1] == ["--"]:
            args.runtime_args = args.runtime_args[1:]
        run(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
