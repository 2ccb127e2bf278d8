"""Kubernetes probes (httpGet, tcpSocket, exec) run against local processes.

Why: a probe that targets the wrong path or port, or a route that answers before the engine is
up, only shows in a cluster. Here each probe of a manifest is executed the way the kubelet does
(success = HTTP 200-399, a TCP connect, exit code 0), against the port the local runner mapped.
"""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from typing import Any

import httpx

PROBE_KINDS = ("startupProbe", "readinessProbe", "livenessProbe")


@dataclass
class ProbeResult:
    """One probe execution: what was asked, whether it passed, and what answered."""

    kind: str
    target: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.kind:<15} {self.target:<45} {self.detail}"


def budget_seconds(probe: dict[str, Any]) -> float:
    """How long the kubelet tolerates failures of this probe before acting on it."""
    return (probe.get("initialDelaySeconds", 0)
            + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
            + probe.get("timeoutSeconds", 1))


def resolve_port(port: int | str, container: dict[str, Any]) -> int:
    """A probe's port, which may name one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"probe port {port!r} names no port of container {container.get('name')!r}")


def run_probe(kind: str, probe: dict[str, Any], container: dict[str, Any],
              port_map: dict[int, int], exec_env: dict[str, str],
              exec_argv: list[str] | None = None) -> ProbeResult:
    """Execute ``probe`` once against the local process (ports mapped through ``port_map``)."""
    timeout = float(probe.get("timeoutSeconds", 1))
    if "httpGet" in probe:
        get = probe["httpGet"]
        port = port_map.get(resolve_port(get["port"], container), resolve_port(get["port"],
                                                                                container))
        scheme = get.get("scheme", "HTTP").lower()
        url = f"{scheme}://127.0.0.1:{port}{get.get('path', '/')}"
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
        target = f"GET :{get['port']}{get.get('path', '/')}"
        try:
            r = httpx.get(url, headers=headers, timeout=timeout, verify=False)
        except httpx.HTTPError as e:
            return ProbeResult(kind, target, False, f"{type(e).__name__} on {url}")
        return ProbeResult(kind, target, 200 <= r.status_code < 400,
                           f"HTTP {r.status_code} on {url}")
    if "tcpSocket" in probe:
        declared = resolve_port(probe["tcpSocket"]["port"], container)
        port = port_map.get(declared, declared)
        target = f"TCP :{declared}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout):
                return ProbeResult(kind, target, True, f"connected to 127.0.0.1:{port}")
        except OSError as e:
            return ProbeResult(kind, target, False, f"{e} on 127.0.0.1:{port}")
    if "exec" in probe:
        argv = exec_argv or probe["exec"]["command"]
        target = "exec " + " ".join(probe["exec"]["command"])
        try:
            done = subprocess.run(argv, env=exec_env, capture_output=True, text=True,
                                  timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            return ProbeResult(kind, target, False, f"timed out after {timeout} s")
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
        return ProbeResult(kind, target, done.returncode == 0,
                           f"exit {done.returncode} {tail[0][:80]}")
    raise ValueError(f"unsupported probe (only httpGet, tcpSocket, exec): {sorted(probe)}")
