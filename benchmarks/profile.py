"""Where a server's front-end process spends its CPU under load (py-spy), runtime or vLLM.

Why: when this runtime is slower than plain vLLM on the same engine, the difference is in
the process in front of the engine (HTTP framework, protocol adapters, detokenization,
metrics), not in the engine, which is the same code with the same settings. This starts one
server alone, drives it with the benchmark client, samples its front-end process with
``py-spy`` (in the ``bench`` extra), and reports CPU seconds per 1000 output tokens for the
front-end and the engine processes, and the share of samples by package.

    python -m benchmarks.profile --server runtime --model-dir .models/smollm2 \\
        --api v2-generate-stream --concurrency 8 --out /tmp/prof-runtime
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.clients import Target
from benchmarks.load import Load
from benchmarks.runner import RunPlan, run
from benchmarks.servers import runtime_server, vllm_server
from benchmarks.sidebyside import DEFAULT_ENGINE_ARGS
from benchmarks.workload import load_tokenizer, random_prompts
from deployment.processes import ServerProcess, free_port, stop_on_sigterm

# This checkout's runtime package: its frames carry this absolute path.
RUNTIME_DIR = Path(__file__).resolve().parents[1] / "runtime"
# Package of a frame's file, for the share-of-samples table (first match wins).
CATEGORIES = (
    ("runtime (this project)", re.compile(re.escape(f"{RUNTIME_DIR}/") + r"|[( ]runtime/")),
    ("kserve", re.compile(r"kserve/")),
    ("vllm entrypoints (OpenAI serving)", re.compile(r"vllm/entrypoints/")),
    ("vllm engine client / output processing", re.compile(r"vllm/v1/engine/|vllm/v1/metrics")),
    ("vllm tokenizers / detokenizer", re.compile(r"vllm/(tokenizers|transformers_utils)/|tokenizers")),
    ("fastapi / starlette / uvicorn", re.compile(r"(fastapi|starlette|uvicorn|h11|httptools)/")),
    ("pydantic", re.compile(r"pydantic")),
    ("prometheus", re.compile(r"prometheus")),
    ("asyncio / selectors", re.compile(r"asyncio/|selectors\.py|uvloop")),
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = (int(x) for x in line.split())
        children.setdefault(pp, []).append(p)
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def shares(raw: str) -> tuple[dict[str, float], list[tuple[str, float]], int]:
    """Inclusive share of samples per category and the top leaf frames (py-spy raw format)."""
    total, per_cat, leaves = 0, Counter[str](), Counter[str]()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaves[frames[-1]] += n
        for name, pattern in CATEGORIES:
            if any(pattern.search(f) for f in frames):
                per_cat[name] += n
    total = max(total, 1)
    return ({k: per_cat[k] / total for k, _ in CATEGORIES},
            [(f, n / total) for f, n in leaves.most_common(25)], total)


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", choices=("runtime", "vllm"), required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--served-model-name", default="smollm2")
    p.add_argument("--api", default="v2-generate-stream")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--num-prompts", type=int, default=48)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    p.add_argument("--out", type=Path, required=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    engine_args = argv[argv.index("--") + 1:] if "--" in argv else list(DEFAULT_ENGINE_ARGS)
    a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    a.out.mkdir(parents=True, exist_ok=True)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(pyspy, os.X_OK):  # before a server start, not after it
        raise SystemExit("python -m benchmarks.profile: py-spy not found (on PATH or next to "
                         f"{sys.executable}): install the bench extra, pip install -e '.[bench]'")
    model_dir = str(Path(a.model_dir).resolve())
    server: ServerProcess = (
        runtime_server(model_dir, a.served_model_name, engine_args, free_port(), free_port(),
                       a.out / "logs") if a.server == "runtime" else
        vllm_server(model_dir, a.served_model_name, engine_args, free_port(), a.out / "logs"))
    server.start()
    try:
        front = server.pid
        engine = descendants(front)
        tokenizer = load_tokenizer(model_dir)
        prompts = random_prompts(tokenizer, a.num_prompts + 4, a.input_len, a.output_len, 7)
        load = Load(concurrency=a.concurrency)
        plan = RunPlan(apis=[a.api], loads=[load], warmup=4, cooldown_s=2.0)
        target = Target(a.server, server.url, a.served_model_name)
        raw_path = a.out / "pyspy.txt"
        spy = subprocess.Popen([pyspy, "record", "--pid", str(front), "--format", "raw",
                                "--rate", str(a.rate), "--nonblocking", "-o", str(raw_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = {pid: cpu_seconds(pid) for pid in [front, *engine]}
        res = run([target], {(a.api, load.label, 0): prompts[:a.num_prompts]},
                  prompts[a.num_prompts:], plan, tokenizer, progress=False)
        after = {pid: cpu_seconds(pid) for pid in before}
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    finally:
        server.stop()
    point = res.points[0]
    k_tokens = point["total_output_tokens"] / 1000
    front_cpu = after[front] - before[front]
    engine_cpu = sum(after[x] - before[x] for x in engine)
    cats, leaves, samples = shares(raw_path.read_text() if raw_path.exists() else "")
    report: dict[str, Any] = {
        "server": a.server, "api": a.api, "concurrency": a.concurrency,
        "output_throughput": point["output_throughput"],
        "median_ttft_ms": point["median_ttft_ms"], "median_tpot_ms": point["median_tpot_ms"],
        "front_cpu_s_per_1k_tokens": front_cpu / k_tokens,
        "engine_cpu_s_per_1k_tokens": engine_cpu / k_tokens,
        "front_cpu_fraction": front_cpu / point["duration_s"],
        "samples": samples, "category_shares": cats, "top_leaf_frames": leaves,
    }
    (a.out / "profile.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "top_leaf_frames"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
