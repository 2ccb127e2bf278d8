"""Entry point of the multi-node (Ray) pods: ``python -m deployment.ray_bootstrap head|worker|health``.

Why a module and not shell in YAML: the head must not start vLLM before every worker node has
joined (vLLM would place the model on too few GPUs or fail), and must fail loudly, with a non-zero
exit, when they never come; a worker must wait for the head instead of crash-looping. That logic
deserves tests, which inline shell in a ServingRuntime cannot have.

head   starts Ray (``ray start --head``), waits until RAY_NODE_COUNT nodes are alive (at most
       RAY_WAIT_TIMEOUT seconds, then exit 1 with the count it saw), then replaces itself with
       ``python -m runtime <its other arguments> --tensor-parallel-size=TENSOR_PARALLEL_SIZE
       --pipeline-parallel-size=PIPELINE_PARALLEL_SIZE --distributed-executor-backend=B``.
       B is ``ray`` when the Ray cluster has GPUs, else ``mp`` (vLLM's CPU build refuses Ray;
       the engine then runs on the head alone).
worker waits until the head's Ray port accepts connections (RAY_WAIT_TIMEOUT), then runs
       ``ray start --address HEAD --block`` in its place.
health exit 0 if the head's Ray cluster answers (the worker pods' probe).

Environment (KServe's controller injects the first four into multi-node pods): RAY_NODE_COUNT,
TENSOR_PARALLEL_SIZE, PIPELINE_PARALLEL_SIZE, HEAD_SVC (the head Service; an IP is used as is,
a name gets ``.POD_NAMESPACE.svc.cluster.local``), RAY_PORT (6379), POD_IP, RAY_WAIT_TIMEOUT
(600), RAY_START_ARGS (extra ``ray start`` flags, e.g. ``--num-cpus=1``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from deployment.processes import free_port, group_members
from runtime.auth import redact_argv

LOG_PREFIX = "ray_bootstrap:"


def log(msg: str) -> None:
    print(f"{LOG_PREFIX} {msg}", flush=True)


def _ray_cli() -> str:
    """The ``ray`` script next to this interpreter (the image's venv), else PATH's."""
    candidate = os.path.join(os.path.dirname(sys.executable), "ray")
    return candidate if os.path.exists(candidate) else "ray"


def head_address(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """HOST:PORT of the head's Ray GCS, from HEAD_SVC / POD_NAMESPACE / RAY_PORT."""
    svc = env.get("HEAD_SVC")
    if not svc:
        raise SystemExit(f"{LOG_PREFIX} HEAD_SVC is not set: a worker needs the head Service "
                         "(KServe injects it into multi-node pods)")
    try:
        ipaddress.ip_address(svc)
        host = svc
    except ValueError:
        host = svc if "." in svc else f"{svc}.{env.get('POD_NAMESPACE', 'default')}.svc.cluster.local"
    return f"{host}:{env.get('RAY_PORT', '6379')}"


def _has_flag(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def runtime_command(runtime_args: Sequence[str], tp: int, pp: int, backend: str) -> list[str]:
    """``python -m runtime`` with the parallel sizes and executor, unless already given."""
    argv = [sys.executable, "-m", "runtime", *runtime_args]
    for flag, value in (("--tensor-parallel-size", tp), ("--pipeline-parallel-size", pp),
                        ("--distributed-executor-backend", backend)):
        if not _has_flag(runtime_args, flag):
            argv.append(f"{flag}={value}")
    return argv


def wait_for_nodes(address: str, expected: int, timeout: float, interval: float = 2.0) -> float:
    """Block until ``expected`` Ray nodes are alive; the cluster's GPU count. SystemExit(1)
    with the count seen when ``timeout`` passes first."""
    import ray  # deferred: ray takes seconds to import and `health` does not need it

    deadline = time.monotonic() + timeout
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        seen, last_log = 0, 0.0
        while True:
            seen = len([n for n in ray.nodes() if n.get("Alive")])
            gpus = float(ray.cluster_resources().get("GPU", 0))
            if seen >= expected:
                log(f"{seen} of {expected} Ray nodes joined ({gpus:g} GPUs)")
                return gpus
            now = time.monotonic()
            if now >= deadline:
                log(f"ERROR: only {seen} of {expected} Ray nodes joined within {timeout:g} s. "
                    f"Check that the worker pods run and reach the head at {address} (their "
                    f"logs show `{LOG_PREFIX} waiting for the head`), or raise RAY_WAIT_TIMEOUT.")
                raise SystemExit(1)
            if now - last_log >= 10:
                log(f"waiting for Ray nodes: {seen} of {expected} joined "
                    f"({deadline - now:.0f} s left)")
                last_log = now
            time.sleep(interval)
    finally:
        ray.shutdown()


def _ray_start(extra: Sequence[str], head: bool) -> list[str]:
    # Fixed default ports (dashboard agent 52365, client server 10001) collide when several
    # Ray nodes share one host (the local runner, tests); free ports cost nothing in a pod.
    argv = [_ray_cli(), "start", "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}"]
    if head:
        argv += ["--head", "--include-dashboard=false", f"--ray-client-server-port={free_port()}"]
    return argv + list(extra) + shlex.split(os.environ.get("RAY_START_ARGS", ""))


def head(argv: Sequence[str]) -> int:
    """Start the Ray head, wait for the workers, then exec the runtime (never returns on success)."""
    p = argparse.ArgumentParser(prog="python -m deployment.ray_bootstrap head", allow_abbrev=False)
    p.add_argument("--ray-port", type=int, default=int(os.environ.get("RAY_PORT", 6379)))
    p.add_argument("--ray-nodes", type=int, default=int(
        os.environ.get("RAY_NODE_COUNT", os.environ.get("PIPELINE_PARALLEL_SIZE", 1))))
    p.add_argument("--ray-wait-timeout", type=float,
                   default=float(os.environ.get("RAY_WAIT_TIMEOUT", 600)))
    p.add_argument("--ray-executor", choices=["auto", "ray", "mp"], default="auto")
    args, runtime_args = p.parse_known_args(argv)
    ip = os.environ.get("POD_IP", "127.0.0.1")
    address = f"{ip}:{args.ray_port}"
    cmd = _ray_start([f"--port={args.ray_port}", f"--node-ip-address={ip}"], head=True)
    log(f"starting the Ray head: {' '.join(cmd)}")
    if subprocess.run(cmd).returncode != 0:
        log(f"ERROR: `ray start --head` failed on {address}")
        return 1
    try:
        gpus = wait_for_nodes(address, args.ray_nodes, args.ray_wait_timeout)
    except SystemExit:
        _stop_own_ray()
        raise
    backend = args.ray_executor
    if backend == "auto":
        backend = "ray" if gpus > 0 else "mp"
        if backend == "mp":
            log("no GPU in the Ray cluster: vLLM's CPU build refuses the Ray executor, so the "
                "engine runs on the head with the multiprocessing executor")
    tp = int(os.environ.get("TENSOR_PARALLEL_SIZE", 1))
    pp = int(os.environ.get("PIPELINE_PARALLEL_SIZE", 1))
    cmd = runtime_command(runtime_args, tp, pp, backend)
    env = {**os.environ, "RAY_ADDRESS": address}
    log(f"starting the runtime: {' '.join(redact_argv(cmd))}")
    sys.stdout.flush()
    os.execve(cmd[0], cmd, env)
    return 1  # not reached


def _stop_own_ray(grace: float = 3.0) -> None:
    """End the Ray daemons this head started (they share its process group), not others'.

    Like ``ray stop`` but scoped: ``ray stop`` would end every Ray process of the machine.
    SIGTERM first; the GCS server ignores it, so SIGKILL what is left after ``grace`` seconds.
    """
    others = [pid for pid in group_members(os.getpgrp()) if pid != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in others:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p in group_members(os.getpgrp())
                                                  for p in others):
            time.sleep(0.2)
        others = [p for p in others if p in group_members(os.getpgrp())]


def _reachable(address: str, timeout: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def worker(argv: Sequence[str]) -> int:
    """Wait for the head's Ray port, then become ``ray start --address HEAD --block``."""
    p = argparse.ArgumentParser(prog="python -m deployment.ray_bootstrap worker")
    p.add_argument("--ray-head-address", default=None, help="HOST:PORT (default from HEAD_SVC)")
    p.add_argument("--ray-wait-timeout", type=float,
                   default=float(os.environ.get("RAY_WAIT_TIMEOUT", 600)))
    args = p.parse_args(argv)
    address = args.ray_head_address or head_address()
    deadline = time.monotonic() + args.ray_wait_timeout
    last_log = 0.0
    while not _reachable(address):
        now = time.monotonic()
        if now >= deadline:
            log(f"ERROR: the head's Ray port {address} did not answer within "
                f"{args.ray_wait_timeout:g} s")
            return 1
        if now - last_log >= 10:
            log(f"waiting for the head at {address} ({deadline - now:.0f} s left)")
            last_log = now
        time.sleep(2)
    ip = os.environ.get("POD_IP", "127.0.0.1")
    cmd = _ray_start([f"--address={address}", f"--node-ip-address={ip}", "--block"], head=False)
    log(f"joining the Ray cluster: {' '.join(cmd)}")
    sys.stdout.flush()
    os.execv(cmd[0] if os.path.isabs(cmd[0]) else _which(cmd[0]), cmd)
    return 1  # not reached


def _which(name: str) -> str:
    import shutil

    return shutil.which(name) or name


def health(argv: Sequence[str]) -> int:
    """Exit 0 if the Ray cluster of the head answers ``ray health-check``."""
    p = argparse.ArgumentParser(prog="python -m deployment.ray_bootstrap health")
    p.add_argument("--ray-head-address", default=None, help="HOST:PORT (default from HEAD_SVC)")
    args = p.parse_args(argv)
    address = args.ray_head_address or head_address()
    done = subprocess.run([_ray_cli(), "health-check", f"--address={address}"],
                          capture_output=True, text=True, timeout=60)
    print(f"{LOG_PREFIX} ray health-check {address}: exit {done.returncode}")
    return done.returncode


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"head": head, "worker": worker, "health": health}
    if not argv or argv[0] not in commands:
        print(__doc__)
        print("usage: python -m deployment.ray_bootstrap head|worker|health [options]")
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
