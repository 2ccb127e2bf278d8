"""``side-by-side``: start this runtime and plain vLLM, check they match, run, stop, report.

Why the tool starts both servers itself: a fair comparison needs the same model, the same
engine arguments and the same machine state, and a record of all three. Each server is
started alone (so its time to ready is not slowed by the other's start), the effective
engine settings are compared before any load is sent, and both are stopped whatever happens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.cli import add_load_flags, execute
from benchmarks.clients import Target
from benchmarks.servers import runtime_server, server_info, settings_differences, vllm_server
from deployment.processes import ServerProcess, free_port

# The runtime's CPU defaults, passed explicitly to both servers when no engine args are given.
DEFAULT_ENGINE_ARGS = ["--dtype=float32", "--enforce-eager", "--max-model-len=2048"]


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", required=True, help="model folder (weights and tokenizer)")
    p.add_argument("--served-model-name", default="smollm2")
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--allow-different-settings", action="store_true",
                   help="report even if the engine settings differ (marked in run.json)")
    add_load_flags(p)


def cmd_side_by_side(args: argparse.Namespace, engine_args: list[str]) -> int:
    """Start both servers, run the load, write the report; 2 if settings differ."""
    engine_args = engine_args or list(DEFAULT_ENGINE_ARGS)
    model_dir = str(Path(args.model_dir).resolve())
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    timeout = args.startup_timeout
    servers: list[ServerProcess] = [
        vllm_server(model_dir, args.served_model_name, engine_args, free_port(), logs, timeout),
        runtime_server(model_dir, args.served_model_name, engine_args, free_port(),
                       free_port(), logs, timeout),
    ]
    try:
        for s in servers:
            print(f"starting {s.name}: {' '.join(s.argv)}", flush=True)
            s.start()
            print(f"{s.name} ready after {s.ready_s:.1f} s", flush=True)
        info = {s.name: server_info(s) for s in servers}
        diffs = settings_differences(info["runtime"]["engine_settings"],
                                     info["vllm"]["engine_settings"])
        if diffs and not args.allow_different_settings:
            (out / "refused.json").write_text(json.dumps(
                {"reason": "engine settings differ", "differences": diffs, "servers": info},
                indent=2))
            print("refusing to compare: the servers' effective engine settings differ:\n  "
                  + "\n  ".join(diffs))
            return 2
        vllm, rt = servers
        models, order = tuple(args.models or ()), args.model_order
        targets = [Target("runtime", rt.url, args.served_model_name,
                          grpc_url=f"127.0.0.1:{rt.grpc_port}", models=models,
                          model_order=order),
                   Target("vllm", vllm.url, args.served_model_name, models=models,
                          model_order=order)]
        args.baseline = "vllm"
        doc, _ = execute(args, targets, model_dir, extra={
            "servers": info, "engine_args": engine_args, "settings_differences": diffs})
    finally:
        for s in servers:
            s.stop()
    print((out / "summary.md").read_text())
    return 0 if all(p["failed"] == 0 for p in doc["points"]) else 1
