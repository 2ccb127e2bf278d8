"""Check this client against vLLM's own harness on the same server and workload.

Why: ``python -m benchmarks`` re-implements the measuring (its own async client, its own
prompt builder) so that it can drive v2 routes and two servers at once; before its numbers
are believed, its output-token throughput and median TTFT must agree with
``vllm.benchmarks.serve`` within 10% on the OpenAI chat path. Both harnesses send the same
prompts and output lengths (``--prompts same``: vLLM's ``custom`` dataset), on one plain vLLM
server started without prefix caching. Two designs:

- ``--mode turns`` (default): the harnesses take turns (A, B, B, A, ...), each with the
  whole load; the means over rounds are compared. On a busy machine the server's speed
  drifts between turns, so run it on a quiet one.
- ``--mode together``: both at the same time, half the concurrency each, so their requests
  share engine steps; vLLM's harness starts first and this client when the server's
  ``vllm:num_requests_running`` turns positive, so its first wave queues behind the other's.

Lengths are spread (``--random-range-ratio``) because with one length the TTFT median of a
closed loop jumps between engine-step plateaus, whatever the client (docs/benchmarks.md).

    python -m benchmarks.validate --model-dir .models/smollm2 --out /tmp/validate
    python -m benchmarks.validate --url http://127.0.0.1:8000 --model-dir ... --out ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.clients import Target
from benchmarks.load import Load
from benchmarks.runner import RunPlan, run
from benchmarks.servers import vllm_server
from benchmarks.workload import Prompt, load_tokenizer, random_prompts
from deployment.processes import engine_env, free_port, stop_on_sigterm

COMPARED = ("output_throughput", "median_ttft_ms")


def start_theirs(a: argparse.Namespace, url: str, seed: int, concurrency: int, warmups: int,
                 out: Path, prompts_jsonl: Path | None) -> subprocess.Popen[bytes]:
    """vLLM's harness in a subprocess (``benchmarks.baseline``), its result into ``out``;
    with ``prompts_jsonl`` it sends exactly those prompts, else its own random dataset."""
    from benchmarks.baseline import harness_flags

    flags = harness_flags(base_url=url, model=a.served_model_name, tokenizer=a.model_dir,
                          backend="openai-chat", endpoint="/v1/chat/completions",
                          concurrency=concurrency, num_prompts=a.num_prompts,
                          input_len=a.input_len, output_len=a.output_len, seed=seed,
                          warmups=warmups, range_ratio=a.random_range_ratio,
                          prompts_jsonl=str(prompts_jsonl) if prompts_jsonl else None)
    log = out.with_suffix(".log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "benchmarks.baseline", str(out), "--",
                             *flags], env=engine_env(), stdout=log, stderr=subprocess.STDOUT)


def finish_theirs(proc: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    if proc.wait(timeout=1800) != 0:
        raise RuntimeError(f"vLLM's harness exited with {proc.returncode}; see {out}.log")
    result = json.loads(out.read_text())
    if result.get("failed"):
        raise RuntimeError(f"{result['failed']} requests of vLLM's harness failed; see "
                           f"{out.with_suffix('.log')}")
    return result


def ours(a: argparse.Namespace, url: str, prompts: list[Prompt], tokenizer: Any,
         concurrency: int, warmups: int) -> dict[str, Any]:
    """One round of this client with the same workload (closed loop at ``concurrency``);
    the last ``warmups`` prompts warm up. The point's summary, with every request's TTFT
    (seconds) under ``ttfts`` as vLLM's harness reports them."""
    load = Load(concurrency=concurrency)
    plan = RunPlan(apis=["openai-chat"], loads=[load], warmup=warmups, cooldown_s=0.0)
    n = len(prompts) - warmups
    res = run([Target("vllm", url, a.served_model_name)],
              {("openai-chat", load.label, 0): prompts[:n]}, prompts[n:], plan, tokenizer,
              progress=False)
    point = dict(res.points[0])
    point["ttfts"] = [r.ttft for r in res.records if r.success]
    return point


def wait_for_requests(url: str, proc: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    """Block until the server reports a running request (vLLM's Prometheus gauge)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            for line in httpx.get(url + "/metrics", timeout=2).text.splitlines():
                if line.startswith("vllm:num_requests_running") and \
                        float(line.rsplit(" ", 1)[1]) > 0:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise TimeoutError("vLLM's harness never started sending")


def write_prompts(prompts: list[Prompt], path: Path) -> Path:
    """The prompts as vLLM's ``custom`` dataset reads them: ``{"prompt", "output_tokens"}``
    a line (the harness runs with ``--custom-output-len -1`` to take each line's length)."""
    path.write_text("".join(json.dumps({"prompt": p.text, "output_tokens": p.output_len})
                            + "\n" for p in prompts))
    return path


def one_round(a: argparse.Namespace, url: str, r: int, tokenizer: Any, tmp: Path
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ours, vLLM's) for round ``r`` in the chosen mode."""
    out = tmp / f"vllm-{r}.json"
    together = a.mode == "together"
    warmups = 0 if together else a.warmup
    # Built before vLLM's harness starts, so that this client starts sending at once.
    prompts = random_prompts(tokenizer, a.num_prompts + warmups, a.input_len, a.output_len,
                             seed=1000 + r, range_ratio=a.random_range_ratio)
    n = a.num_prompts
    # The harness warms up with its first prompt (vLLM's rule); this client with its last
    # ``warmups``; both measure the same ``n`` prompts in the same order.
    jsonl = write_prompts(prompts[:n], tmp / f"prompts-{r}.jsonl") \
        if a.prompts == "same" else None
    if together:
        half = max(1, a.concurrency // 2)
        proc = start_theirs(a, url, r, half, 0, out, jsonl)
        wait_for_requests(url, proc)
        mine = ours(a, url, prompts, tokenizer, half, 0)
        return mine, finish_theirs(proc, out)
    if r % 2:  # turns: A B, then B A
        mine = ours(a, url, prompts, tokenizer, a.concurrency, warmups)
        return mine, finish_theirs(start_theirs(a, url, r, a.concurrency, warmups, out, jsonl),
                                   out)
    vllm = finish_theirs(start_theirs(a, url, r, a.concurrency, warmups, out, jsonl), out)
    return ours(a, url, prompts, tokenizer, a.concurrency, warmups), vllm


def plot_ttft_cdfs(mine: list[dict[str, Any]], vllm: list[dict[str, Any]], path: Path) -> None:
    """Both harnesses' TTFT distributions, round by round: agreement (or not) at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r, (m, v) in enumerate(zip(mine, vllm, strict=True)):
        for label, ttfts, style in (("this client", m["ttfts"], "-"),
                                    ("vLLM harness", v.get("ttfts") or [], "--")):
            xs = sorted(t * 1000 for t in ttfts)
            if xs:
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.step(xs, ys, style, where="post", color=f"C{r}",
                        label=f"round {r}: {label}")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_xlabel("TTFT (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("TTFT, this client vs vLLM's harness (same server, same prompts)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def agreement(mine: list[dict[str, Any]], vllm: list[dict[str, Any]],
              tolerance: float) -> dict[str, Any]:
    """Mean of each compared metric per harness, their ratio, and whether within tolerance."""
    out: dict[str, Any] = {}
    for m in COMPARED:
        a, b = statistics.mean(x[m] for x in mine), statistics.mean(x[m] for x in vllm)
        out[m] = {"ours": a, "vllm": b, "ratio": a / b, "ok": abs(a / b - 1) <= tolerance}
    out["ok"] = all(out[m]["ok"] for m in COMPARED)
    return out


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    p = argparse.ArgumentParser(prog="python -m benchmarks.validate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="model folder (tokenizer; weights)")
    p.add_argument("--served-model-name", default="smollm2")
    p.add_argument("--url", default=None,
                   help="a running plain vLLM (started with --no-enable-prefix-caching, or "
                        "the harness that goes second hits the cache); else one is started")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--num-prompts", type=int, default=128)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="turns of each harness")
    p.add_argument("--tolerance", type=float, default=0.10)
    p.add_argument("--mode", choices=("together", "turns"), default="turns")
    p.add_argument("--prompts", choices=("same", "own"), default="same",
                   help="same: vLLM's harness sends this client's prompts (its custom "
                        "dataset); own: each harness builds its own random prompts")
    p.add_argument("--random-range-ratio", type=float, default=0.5,
                   help="input and output lengths uniform in len * [1-r, 1+r] (vLLM's flag, "
                        "given to both harnesses), so requests do not end in lockstep")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    server = None
    if a.url is None:
        # No prefix caching: with --prompts same, the harness that goes second would
        # otherwise find every prompt cached and report a shorter TTFT for that alone.
        server = vllm_server(str(Path(a.model_dir).resolve()), a.served_model_name,
                             ["--dtype=float32", "--enforce-eager", "--max-model-len=2048",
                              "--no-enable-prefix-caching"],
                             free_port(), a.out / "logs")
        server.start()
    url = a.url or server.url  # type: ignore[union-attr]
    try:
        tokenizer = load_tokenizer(a.model_dir)
        mine, vllm = [], []
        if a.mode == "together":  # warm the server once; the rounds then send no warm-up
            ours(a, url, random_prompts(tokenizer, a.concurrency, a.input_len, a.output_len,
                                        seed=999), tokenizer, a.concurrency, 0)
        for r in range(a.rounds):
            m, v = one_round(a, url, r, tokenizer, a.out)
            mine.append(m)
            vllm.append(v)
            print(f"round {r}: vLLM harness {vllm[-1]['output_throughput']:.1f} tok/s, "
                  f"TTFT {vllm[-1]['median_ttft_ms']:.0f} ms; this client "
                  f"{mine[-1]['output_throughput']:.1f} tok/s, "
                  f"TTFT {mine[-1]['median_ttft_ms']:.0f} ms", flush=True)
    finally:
        if server is not None:
            server.stop()
    result = agreement(mine, vllm, a.tolerance)
    plot_ttft_cdfs(mine, vllm, a.out / "ttft_cdf.png")
    keep = ("output_throughput", "median_ttft_ms", "median_tpot_ms", "median_itl_ms",
            "p99_ttft_ms", "total_input_tokens", "total_output_tokens", "completed", "failed",
            "duration", "duration_s")
    (a.out / "validate.json").write_text(json.dumps({
        "settings": {k: str(v) for k, v in vars(a).items()}, "agreement": result,
        "ours": [{k: x.get(k) for k in keep} for x in mine],
        "vllm": [{k: x.get(k) for k in keep} for x in vllm],
        "ttfts_s": {"ours": [x["ttfts"] for x in mine],
                    "vllm": [x.get("ttfts") for x in vllm]}}, indent=2))
    for metric in COMPARED:
        verdict = result[metric]
        print(f"{metric}: this client {verdict['ours']:.2f}, vLLM harness {verdict['vllm']:.2f}, "
              f"ratio {verdict['ratio']:.3f} ({'within' if verdict['ok'] else 'OUTSIDE'} "
              f"{a.tolerance:.0%})")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
