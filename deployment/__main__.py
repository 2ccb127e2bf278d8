"""``python -m deployment``: run, plan or render an InferenceService or an LLMInferenceService
without a cluster; build the example LoRA adapters.

Why a CLI and not only a test helper: users who write an InferenceService want to know, before
they apply it, that the runtime it selects starts with their arguments, that its probes answer
on the paths and ports the manifest names, and what the pods will look like to a scanner.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from deployment.llmisvc import find_llmisvc, plan_llmisvc, tls_secret_name, write_self_signed_tls
from deployment.local import LocalDeployment, StartupError
from deployment.manifests import (
    ContainerPlan,
    Manifest,
    ManifestError,
    find_isvc,
    load_manifests,
    plan,
)
from deployment.pods import pod_documents

EPILOG = """\
examples:
  # run the CPU example against a local model folder, check every probe, keep serving:
  python -m deployment run --isvc servingruntimes/examples/smollm2-standard-cpu.yaml \\
      --runtime servingruntimes/ --model-dir .models/smollm2
  # the same, exit 0 once all probes pass (CI), predictor only, ports from 8080 upwards:
  python -m deployment run --isvc ... --runtime servingruntimes/ --model-dir ... \\
      --component predictor --base-port 8080 --check
  # what would run, and the Pods KServe would create (for checkov, kubeconform, ...):
  python -m deployment plan --isvc ... --runtime servingruntimes/
  python -m deployment pods --isvc ... --runtime servingruntimes/ > pods.yaml
  # the LoRA example: base model and adapters from storageUris, each URI a local folder:
  python -m deployment adapters --base .models/smollm2 --out .models/smollm2-adapters
  python -m deployment run --isvc servingruntimes/examples/smollm2-lora-cpu.yaml \
      --runtime servingruntimes/ \
      --storage hf://HuggingFaceTB/SmolLM2-135M-Instruct=.models/smollm2 \
      --storage s3://example-models/smollm2-adapters=.models/smollm2-adapters
  # an LLMInferenceService: KServe's template command (vllm serve ... over HTTPS) for real:
  python -m deployment run --isvc llmisvc/smollm2-cpu.yaml --model-dir .models/smollm2

How it maps a pod to this machine: `python` is this interpreter; /mnt/models is --model-dir;
each storage location (storageUri, every storageUris entry) is the --storage folder of its URI;
each emptyDir is a folder under --workdir; every port of a component (containerPort, probe
port, --*port flag, *_PORT variable) gets a local port; fieldRef variables get local values
(status.podIP = 127.0.0.1); the explainer's --predictor_host is the local predictor; in
multi-node runtimes the workers are started next to the head and HEAD_SVC is 127.0.0.1.
GPU requests are not emulated: GPU manifests run on whatever vLLM build is installed.
An LLMInferenceService is merged with KServe's default template (deployment/data), runs its
`bash -c` script with docker/bin (the image's `vllm`) first on PATH, its literal `--port 8000`
rewritten to the local port, and a self-signed certificate (WORKDIR/tls/tls.crt, its own CA)
as the TLS Secret; adapters of spec.model.lora are storage URIs like any other (--storage).
"""


def _runtime_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml")) if p.is_dir() else [p]
    return files


def _env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def _storage_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``URI=DIR`` pairs, split at the last ``=`` (URIs may carry query strings)."""
    out = {}
    for pair in pairs:
        uri, sep, folder = pair.rpartition("=")
        if not sep or not uri or not folder:
            raise SystemExit(f"--storage expects URI=DIR, got {pair!r}")
        out[uri] = folder
    return out


_KEY_FILE = re.compile(r"--api[_-]key[_-]file[= ](\S+)")


def _key_header(dep: LocalDeployment, component: str) -> str:
    """``-H "Authorization: Bearer $(cat FILE)"`` for a component started with a key file
    (``--api_key_file`` in its arguments or environment), else nothing; never the key."""
    for c in dep.containers:
        if c.plan.component == component:
            found = _KEY_FILE.search(" ".join([*c.argv, *c.env.values()]))
            if found:
                return f'-H "Authorization: Bearer $(cat {found.group(1)})" '
    return ""


def _secret_pairs(pairs: Sequence[str]) -> dict[str, Path]:
    """``NAME=DIR`` pairs: a local folder holding a Secret's keys, one file per key."""
    out = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"--secret expects NAME=DIR, got {pair!r}")
        if not Path(folder).is_dir():
            raise SystemExit(f"--secret {name}: {folder} is not a folder")
        out[name] = Path(folder)
    return out


def build_parser() -> argparse.ArgumentParser:
    """Sub-commands ``run``, ``plan`` and ``pods`` sharing the manifest options, and
    ``adapters``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--isvc", required=True,
                        help="YAML file with the InferenceService or LLMInferenceService")
    common.add_argument("--name", help="which InferenceService, if the file holds several")
    common.add_argument("--runtime", action="append", default=[],
                        help="ServingRuntime / ClusterServingRuntime YAML file or folder "
                        "(repeatable; required for an InferenceService)")
    common.add_argument("--llm-config", action="append", default=[],
                        help="LLMInferenceServiceConfig YAML file an LLMInferenceService names in "
                        "baseRefs (repeatable; KServe's default template is always the base)")
    common.add_argument("--component", choices=["predictor", "explainer", "all"], default="all",
                        help="which components to run (default: all the InferenceService has)")
    common.add_argument("--namespace", default="default",
                        help="namespace the pods pretend to live in (default: default)")
    parser = argparse.ArgumentParser(
        prog="python -m deployment",
        description="Run a KServe InferenceService's containers on this machine and check their "
        "probes, print what would run, or render the Pods KServe would create.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="start the containers, check probes",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    run.add_argument("--model-dir", help="local folder that stands for /mnt/models (what "
                     "KServe's storage initializer would download from storageUri)")
    run.add_argument("--storage", action="append", default=[], metavar="URI=DIR",
                     help="local folder standing for what a storage URI would download "
                     "(repeatable; every storageUris entry needs one, split at the last =)")
    run.add_argument("--base-port", type=int, default=0,
                     help="assign local ports from this number upwards (default: free ports)")
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                     help="override an environment variable in every container (repeatable)")
    run.add_argument("--secret", action="append", default=[], metavar="NAME=DIR",
                     help="local folder standing for a Secret (one file per key; repeatable). "
                     "Secrets defined in the manifests' files need none: their data is written "
                     "to WORKDIR/secrets/NAME/ as the kubelet would mount it")
    run.add_argument("--workdir", help="logs, emptyDir folders and the TLS certificate, kept "
                     "(default: a new temp dir, removed when the runner exits)")
    run.add_argument("--predictor-host", help="HOST:PORT of a predictor for --component "
                     "explainer")
    run.add_argument("--check", action="store_true",
                     help="exit (0) once every probe has passed instead of serving until Ctrl-C")
    sub.add_parser("plan", parents=[common], help="print the commands, env and probes")
    sub.add_parser("pods", parents=[common], help="print the Pods KServe would create (YAML)")
    ad = sub.add_parser("adapters", help="build the example LoRA adapters of a base model "
                        "(peft, deterministic), one folder each under --out")
    ad.add_argument("--base", required=True, help="the base model's folder")
    ad.add_argument("--out", required=True, help="folder for the adapters (kept if built)")
    return parser


def _serve(dep: LocalDeployment) -> int:
    """Keep the processes up until Ctrl-C / SIGTERM or until one of them exits."""
    stop = {"now": False}

    def _handler(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    while not stop["now"]:
        for c in dep.containers:
            code = c.process.exit_code()
            if code is not None:
                print(f"[{c.name}] exited with {code}\n{c.process.log_tail()}", file=sys.stderr)
                return 1
        time.sleep(1)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "adapters":
        from deployment.adapters import build_examples

        for name, path in build_examples(args.base, args.out).items():
            print(f"{name}: {path}")
        return 0
    components: tuple[str, ...] = (("predictor", "explainer") if args.component == "all"
                                   else (args.component,))
    try:
        manifests = load_manifests([args.isvc, *args.llm_config,
                                    *_runtime_files(args.runtime)])
        llm = find_llmisvc(manifests, args.name)
        isvc: Manifest
        plans: list[ContainerPlan]
        if llm is not None:
            isvc, components = llm, ("workload",)
            plans = plan_llmisvc(llm, manifests, namespace=args.namespace)
        else:
            if not args.runtime:
                raise ManifestError("an InferenceService needs its runtimes: give --runtime")
            isvc = find_isvc(manifests, args.name)
            plans = plan(isvc, manifests, components)
    except (ManifestError, OSError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "pods":
        yaml.safe_dump_all(pod_documents(plans, args.namespace), sys.stdout, sort_keys=False)
        return 0
    if args.command == "plan":
        for p in plans:
            c = p.container
            print(f"# {p.component} / {p.pod_name} ({p.role})")
            print(yaml.safe_dump({"command": c.get("command"), "args": c.get("args"),
                                  "env": c.get("env"), "injected_env": p.injected_env,
                                  "image_env": p.image_env,
                                  "ports": c.get("ports"), "storage": p.storage,
                                  "probes": {k: c[k] for k in ("startupProbe", "readinessProbe",
                                                                "livenessProbe") if k in c}},
                                 sort_keys=False))
        return 0
    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kserve-local-")).resolve()
    try:
        return _run(args, plans, isvc, llm, components, workdir)
    finally:
        if own_workdir:  # made here: removed whatever happened (its logs went to the output)
            shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, plans: list[ContainerPlan], isvc: Manifest,
         llm: Manifest | None, components: tuple[str, ...], workdir: Path) -> int:
    """Start the planned containers under ``workdir``, check their probes, then serve (or,
    with ``--check``, return); every container is stopped before this returns."""
    # The Secret KServe's controller fills with a self-signed certificate, for the TLS volume.
    tls = {tls_secret_name(llm): workdir / "tls"} if llm is not None else {}
    secrets = {**tls, **_secret_pairs(args.secret)}
    try:
        dep = LocalDeployment(plans, model_dir=args.model_dir,
                              storage=_storage_pairs(args.storage), workdir=workdir,
                              base_port=args.base_port, extra_env=_env_pairs(args.env),
                              predictor_host=args.predictor_host, namespace=args.namespace,
                              secrets=secrets)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds into `finally`, which stops every container

    signal.signal(signal.SIGTERM, _terminate)
    try:
        for folder in tls.values():
            write_self_signed_tls(folder)
        dep.start()
        name = isvc.doc["metadata"]["name"]
        for comp in components:
            try:
                print(f"{comp}: {dep.component_url(comp)}")
            except KeyError:
                pass
        if llm is not None:
            model = (llm.doc["spec"].get("model") or {}).get("name") or name
            print(f"try: curl --cacert {workdir / 'tls' / 'tls.crt'} "
                  f"{dep.component_url('workload')}/v1/chat/completions "
                  f"{_key_header(dep, 'workload')}"
                  f"-H 'content-type: application/json' -d '{{\"model\": \"{model}\", "
                  f"\"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'")
        if "predictor" in components:
            print(f"try: curl {dep.component_url('predictor')}/openai/v1/chat/completions "
                  f"{_key_header(dep, 'predictor')}"
                  f"-H 'content-type: application/json' -d '{{\"model\": \"{name}\", "
                  f"\"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'")
        print("all probes passed", flush=True)
        return 0 if args.check else _serve(dep)
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        dep.stop()


if __name__ == "__main__":
    sys.exit(main())
