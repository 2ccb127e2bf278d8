"""Run an InferenceService's containers as local processes and check their probes.

Why: the closest thing to ``kubectl apply`` that runs without a cluster. Each container planned
by ``deployment.manifests`` runs its own command and arguments with the manifest's environment;
``/mnt/models`` becomes a local model folder (and each ``storageUris`` mount path the folder
given for its URI), every emptyDir a folder under the work directory,
ports become free local ports (the same manifest port maps to one local port inside a
component, as inside one pod network), and the explainer's ``--predictor_host`` points at the
local predictor, as KServe's controller points it at the predictor Service. Then every probe is
checked on its path and port, so a probe that lies or a port that nobody listens on fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployment.manifests import MODEL_MOUNT, ContainerPlan, ManifestError
from deployment.probes import PROBE_KINDS, ProbeResult, budget_seconds, run_probe
from deployment.processes import ChildProcess, free_port
from runtime.auth import redact_argv

_PORT_FLAG = re.compile(r"^--[\w-]*port$")
_PORT_FLAG_EQ = re.compile(r"^(--[\w-]*port)=(\d+)$")
# A port flag inside an inline shell script (`bash -c "... --port 8000 ..."`).
_SCRIPT_PORT = re.compile(r"(?<![\w-])(--[\w-]*port)([ =])(\d+)\b")


class StartupError(RuntimeError):
    """A container exited, or its probes did not pass within the manifest's budget."""


def local_executable(name: str) -> str:
    """``python`` is this interpreter; other commands come from its venv, then from PATH."""
    if name in ("python", "python3", "python3.11"):
        return sys.executable
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.exists():
        return str(venv_bin)
    return shutil.which(name) or name


def _map_paths(value: str, paths: dict[str, str]) -> str:
    """Replace container paths by local ones in one pass, so that a replacement is never
    mapped again (a model folder under /tmp must not become the /tmp emptyDir)."""
    if not paths:
        return value
    sources = "|".join(re.escape(src) for src in sorted(paths, key=len, reverse=True))
    pattern = rf"(?<![\w.~/-])({sources})(?=/|$|[^\w.-])"
    return re.sub(pattern, lambda m: paths[m.group(1)], value)


def _declared_ports(c: dict[str, Any], env: dict[str, str]) -> set[int]:
    ports = {int(p["containerPort"]) for p in c.get("ports", [])}
    for kind in PROBE_KINDS:
        for action in ("httpGet", "tcpSocket"):
            port = c.get(kind, {}).get(action, {}).get("port")
            if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
                ports.add(int(port))
    args = list(c.get("command", [])) + list(c.get("args", []))
    for i, tok in enumerate(args):
        if (m := _PORT_FLAG_EQ.match(tok)):
            ports.add(int(m.group(2)))
        elif _PORT_FLAG.match(tok) and i + 1 < len(args) and args[i + 1].isdigit():
            ports.add(int(args[i + 1]))
        elif any(ch.isspace() for ch in tok):  # a script
            ports |= {int(m.group(3)) for m in _SCRIPT_PORT.finditer(tok)}
    ports |= {int(v) for k, v in env.items() if k.endswith("_PORT") and v.isdigit()}
    return ports


def _map_ports(argv: list[str], port_map: dict[int, int]) -> list[str]:
    out = []
    for i, tok in enumerate(argv):
        if (m := _PORT_FLAG_EQ.match(tok)) and int(m.group(2)) in port_map:
            tok = f"{m.group(1)}={port_map[int(m.group(2))]}"
        elif (i > 0 and _PORT_FLAG.match(argv[i - 1]) and tok.isdigit()
              and int(tok) in port_map):
            tok = str(port_map[int(tok)])
        elif any(ch.isspace() for ch in tok):  # a script: its literal `--port N`
            tok = _SCRIPT_PORT.sub(
                lambda m: m.group(1) + m.group(2) + str(port_map.get(int(m.group(3)),
                                                                     m.group(3))), tok)
        out.append(tok)
    return out


@dataclass
class LocalContainer:
    """A planned container turned into a local command line, environment and port map."""

    plan: ContainerPlan
    argv: list[str]
    env: dict[str, str]
    port_map: dict[int, int]
    process: ChildProcess
    results: list[ProbeResult] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.plan.pod_name

    def scheme(self) -> str:
        """``https`` when the container's startup (else readiness) probe says so."""
        for kind in ("startupProbe", "readinessProbe"):
            get = self.plan.container.get(kind, {}).get("httpGet")
            if get:
                return str(get.get("scheme", "HTTP")).lower()
        return "http"

    def http_port(self) -> int | None:
        """The local port of the container's first declared port (its serving port)."""
        ports = self.plan.container.get("ports", [])
        return self.port_map.get(int(ports[0]["containerPort"])) if ports else None

    def probe(self, kind: str) -> ProbeResult:
        spec = self.plan.container[kind]
        exec_argv = None
        if "exec" in spec:
            cmd = spec["exec"]["command"]
            exec_argv = [local_executable(cmd[0]), *cmd[1:]]
        return run_probe(kind, spec, self.plan.container, self.port_map, self.env, exec_argv)


class LocalDeployment:
    """The containers of one InferenceService, started in order and checked probe by probe.

    ``plans`` come from ``deployment.manifests.plan``. ``model_dir`` replaces ``/mnt/models``;
    ``storage`` maps storage URIs to local folders: each location a plan's storage initializer
    would fill (``storageUri``, every ``storageUris`` entry) becomes the folder given for its
    URI (a location at /mnt/models may use ``model_dir`` instead). ``extra_env`` overrides any
    environment variable of every container (e.g. a smaller KV cache); ``base_port`` assigns
    local ports from that number upwards (0: free ports). ``predictor_host`` is used for the
    explainer when the predictor is not started here. ``secrets`` maps a Secret's name to a
    local folder holding its keys (e.g. the TLS certificate of an LLMInferenceService); a Secret
    not given there but defined in the manifests' files (``ContainerPlan.secrets``, e.g. an
    example's API key) is written to ``WORKDIR/secrets/<name>/<key>`` (mode 0600), as the
    kubelet would mount it; ``secretKeyRef`` variables read the same two sources.
    ``workdir`` holds the logs and Secrets; without one, a temporary folder is made here and
    removed by ``stop()`` (or at once if the plans cannot be localised), so a caller that stops
    the deployment in a ``finally`` leaks nothing; a given ``workdir`` is kept. emptyDir
    volumes live apart, under a short temporary folder that ``stop()`` always removes (an
    emptyDir ends with its pod): a container's ``TMPDIR`` is one, and the Unix sockets vLLM
    (ZeroMQ) and Ray make there must fit in 107 bytes, which a folder under a test's
    ``tmp_path`` did not.
    """

    def __init__(self, plans: Sequence[ContainerPlan], *, model_dir: str | Path | None = None,
                 storage: Mapping[str, str | Path] | None = None,
                 workdir: str | Path | None = None, base_port: int = 0,
                 extra_env: dict[str, str] | None = None, predictor_host: str | None = None,
                 echo: Callable[[str], None] = print, namespace: str = "default",
                 secrets: Mapping[str, str | Path] | None = None) -> None:
        if not plans:
            raise ManifestError("nothing to run: no container planned")
        if model_dir is None and not storage:
            raise ManifestError("give a model folder for /mnt/models (--model-dir) or a "
                                "local folder per storage URI (--storage URI=DIR)")
        self.model_dir = str(Path(model_dir).resolve()) if model_dir is not None else None
        self.storage = {uri: str(Path(d).resolve()) for uri, d in (storage or {}).items()}
        self.own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kserve-local-")).resolve()
        self.volumes_dir = Path(tempfile.mkdtemp(prefix="kl-", dir="/tmp"))
        # and removed with this object (or at exit) if stop() is never called
        weakref.finalize(self, shutil.rmtree, self.volumes_dir, True)
        self._volumes: dict[tuple[str, str], Path] = {}
        self.extra_env = dict(extra_env or {})
        self.predictor_host = predictor_host
        self.echo = echo
        self.namespace = namespace
        self.secrets = {k: str(Path(v).resolve()) for k, v in (secrets or {}).items()}
        self._next_port = base_port
        self._port_maps: dict[str, dict[int, int]] = {}
        try:
            self.containers = [self._localise(p) for p in plans]
        except BaseException:
            self._remove_own_workdir()
            raise

    # ----- turning a plan into a local command -------------------------------------------
    def _port(self) -> int:
        if self._next_port:
            self._next_port += 1
            return self._next_port - 1
        return free_port()

    def _env(self, plan: ContainerPlan) -> dict[str, str]:
        env = {**os.environ, **plan.image_env}
        field_values = {"status.podIP": "127.0.0.1", "metadata.namespace": self.namespace,
                        "metadata.name": plan.pod_name, "spec.nodeName": "localhost",
                        "status.hostIP": "127.0.0.1"}
        for var in plan.container.get("env", []):
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif "fieldRef" in var.get("valueFrom", {}):
                env[var["name"]] = field_values.get(var["valueFrom"]["fieldRef"]["fieldPath"], "")
            elif var["name"] in self.extra_env:
                pass  # set below
            elif (value := self._secret_value(plan, var.get("valueFrom", {}).get(
                    "secretKeyRef"))) is not None:
                env[var["name"]] = value
            else:
                raise ManifestError(f"{plan.pod_name}: env {var['name']} comes from "
                                    f"{sorted(var.get('valueFrom', {}))}; give it with --env")
        env.update(plan.injected_env)
        if "HEAD_SVC" in plan.injected_env:
            env["HEAD_SVC"] = "127.0.0.1"  # the head "Service" is this machine
        env.update(self.extra_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _secret_value(self, plan: ContainerPlan, ref: dict[str, Any] | None) -> str | None:
        """A ``secretKeyRef``'s value: from a given Secret folder, else from the manifests."""
        if not ref or not ref.get("name") or not ref.get("key"):
            return None
        if ref["name"] in self.secrets:
            path = Path(self.secrets[ref["name"]]) / ref["key"]
            return path.read_text() if path.is_file() else None
        return plan.secrets.get(ref["name"], {}).get(ref["key"])

    def _secret_dir(self, plan: ContainerPlan, source: dict[str, Any]) -> str | None:
        """The local folder standing for a Secret volume: given (``secrets``), else written from
        the Secret the manifests define (its ``items`` respected); None for a missing optional
        one. A Secret that is neither is an error naming the option that gives it."""
        name = source.get("secretName", "")
        if name in self.secrets:
            return self.secrets[name]
        if name not in plan.secrets:
            if source.get("optional"):
                return None
            raise ManifestError(f"{plan.pod_name}: Secret {name!r} (a volume) is not defined in "
                                f"the manifests' files: give --secret {name}=DIR")
        data = plan.secrets[name]
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        folder = self.workdir / "secrets" / name
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        for item in items:
            if item["key"] not in data:
                raise ManifestError(f"{plan.pod_name}: Secret {name!r} has no key "
                                    f"{item['key']!r}")
            target = folder / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]])
            target.chmod(0o600)
        return str(folder)

    def _storage_paths(self, plan: ContainerPlan) -> dict[str, str]:
        """Container path -> local folder for /mnt/models and every storage location."""
        paths = {MODEL_MOUNT: self.model_dir} if self.model_dir else {}
        for loc in plan.storage:
            local = self.storage.get(loc["uri"])
            if local is None and loc["mountPath"] == MODEL_MOUNT:
                local = self.model_dir
            if local is None:
                raise ManifestError(f"{plan.pod_name}: no local folder for storage "
                                    f"{loc['uri']} (mounted at {loc['mountPath']}): give "
                                    f"--storage {loc['uri']}=DIR")
            if not Path(local).is_dir():
                raise ManifestError(f"{plan.pod_name}: {local} (for {loc['uri']}) is not a "
                                    "folder")
            paths[loc["mountPath"]] = local
        return paths

    def _localise(self, plan: ContainerPlan) -> LocalContainer:
        c = plan.container
        if not c.get("command"):
            raise ManifestError(f"{plan.pod_name}: container {c.get('name')!r} has no command; "
                                "the local runner cannot know the image's entrypoint")
        env = self._env(plan)
        own = {v["name"] for v in c.get("env", [])} | set(plan.injected_env) | set(self.extra_env)
        port_map = self._port_maps.setdefault(plan.component, {})
        for port in sorted(_declared_ports(c, {k: env[k] for k in own if k in env})):
            if port not in port_map:
                port_map[port] = self._port()
        paths = self._storage_paths(plan)
        volumes = {v["name"]: v for v in plan.pod.get("volumes", [])}
        for mount in c.get("volumeMounts", []):
            vol = volumes.get(mount["name"], {})
            if "emptyDir" in vol and mount["mountPath"] != "/dev/shm":
                key = (plan.pod_name, mount["name"])  # one folder per pod and volume
                local = self._volumes.setdefault(key, self.volumes_dir / str(len(self._volumes)))
                local.mkdir(parents=True, exist_ok=True)
                paths[mount["mountPath"]] = str(local)
            elif "secret" in vol and (local := self._secret_dir(plan, vol["secret"])):
                paths[mount["mountPath"]] = local
        argv = [_map_paths(a, paths) for a in [*c["command"], *c.get("args", [])]]
        argv = _map_ports([local_executable(argv[0]), *argv[1:]], port_map)
        for key in own & set(env):
            value = _map_paths(env[key], paths)
            if key.endswith("_PORT") and value.isdigit() and int(value) in port_map:
                value = str(port_map[int(value)])
            env[key] = value
        log = self.workdir / "logs" / f"{plan.pod_name}.log"
        return LocalContainer(plan, argv, env, port_map, ChildProcess(argv, env, log))

    # ----- running -----------------------------------------------------------------------
    def component_url(self, component: str) -> str:
        """``http(s)://127.0.0.1:PORT`` of a component's serving port (its first
        containerPort; the scheme its probes use)."""
        for c in self.containers:
            if c.plan.component == component and c.http_port():
                return f"{c.scheme()}://127.0.0.1:{c.http_port()}"
        raise KeyError(f"no running {component} with a declared port")

    def _predictor_address(self) -> str:
        try:
            return self.component_url("predictor").split("://", 1)[1]
        except KeyError:
            if self.predictor_host:
                return self.predictor_host
            raise ManifestError("the explainer needs a predictor: run both components or give "
                                "--predictor-host") from None

    def start(self, timeout: float | None = None) -> LocalDeployment:
        """Start each component's containers, wait for their startup probes, check all probes.

        Components start in plan order (predictor, then explainer, like KServe's readiness
        chain). Raises StartupError with the log tail of the container that failed.
        ``timeout`` caps each component's wait for its startup probe (else the probe's own
        budget, which may be 15 minutes).
        """
        self.echo(f"work directory: {self.workdir}")
        for component in dict.fromkeys(c.plan.component for c in self.containers):
            group = [c for c in self.containers if c.plan.component == component]
            for c in group:
                if component == "explainer":
                    self._point_at_predictor(c)
                self.echo(f"[{c.name}] {' '.join(redact_argv(c.argv))}")
                self.echo(f"[{c.name}]   ports {c.port_map}  log {c.process.log_path}")
                c.process.start()
            self.wait_started(group, timeout)
            for c in group:
                c.results = [c.probe(kind) for kind in PROBE_KINDS if kind in c.plan.container]
                for r in c.results:
                    self.echo(f"[{c.name}] {r}")
                failed = [r for r in c.results if not r.ok]
                if failed:
                    raise StartupError(f"{c.name}: {len(failed)} probe(s) failed after start-up:"
                                       f" {failed}\n--- log tail ---\n{c.process.log_tail()}")
        return self

    def _point_at_predictor(self, c: LocalContainer) -> None:
        """``--predictor_host`` (as KServe appends it) becomes the local predictor's address."""
        for i, tok in enumerate(c.argv):
            if tok == "--predictor_host" and i + 1 < len(c.argv):
                c.argv[i + 1] = self._predictor_address()
            elif tok.startswith("--predictor_host="):
                c.argv[i] = f"--predictor_host={self._predictor_address()}"
        c.process.argv = list(c.argv)

    def start_container(self, c: LocalContainer) -> None:
        """Start one container (for callers that order start-up themselves, e.g. tests)."""
        if c.plan.component == "explainer":
            self._point_at_predictor(c)
        self.echo(f"[{c.name}] {' '.join(redact_argv(c.argv))}")
        c.process.start()

    def wait_started(self, group: Sequence[LocalContainer], timeout: float | None = None) -> None:
        """Poll each container's startup probe (else readiness) every second until it passes.

        Fails when a process exits or the probe's own budget (initialDelaySeconds +
        periodSeconds x failureThreshold) passes; ``timeout`` caps that budget.
        """
        pending = list(group)
        started = time.monotonic()
        while pending:
            for c in list(pending):
                kind = next((k for k in ("startupProbe", "readinessProbe")
                             if k in c.plan.container), None)
                if kind is None:
                    pending.remove(c)
                    continue
                budget = budget_seconds(c.plan.container[kind])
                if timeout is not None:
                    budget = min(budget, timeout)
                code = c.process.exit_code()
                if code is not None:
                    raise StartupError(f"{c.name} exited with {code} during start-up\n"
                                       f"--- log tail ---\n{c.process.log_tail()}")
                if c.probe(kind).ok:
                    self.echo(f"[{c.name}] started after {time.monotonic() - started:.0f} s")
                    pending.remove(c)
                elif time.monotonic() - started > budget:
                    raise StartupError(f"{c.name}: {kind} did not pass within its budget of "
                                       f"{budget:.0f} s\n--- log tail ---\n"
                                       f"{c.process.log_tail()}")
            if pending:
                time.sleep(1.0)

    def stop(self) -> None:
        """Stop every container, last started first (each with its whole session); then
        remove the work directory if this deployment made it (no ``workdir`` given)."""
        try:
            for c in reversed(self.containers):
                if c.process.proc is not None:
                    code = c.process.stop()
                    self.echo(f"[{c.name}] stopped (exit {code})")
        finally:
            self._remove_own_workdir()

    def _remove_own_workdir(self) -> None:
        shutil.rmtree(self.volumes_dir, ignore_errors=True)
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalDeployment:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
