"""Session-wide fixtures: the real servers that many tests share, and the suite's guards.

Shared servers (one engine start each, for the whole session): ``predictor`` (the default
runtime), ``guarded_server`` (keys, limits, overload), ``lora_server`` (LoRA adapters, a key).
A test that destroys one (kills its engine, signals it) is marked
``@pytest.mark.destroys("<fixture>")`` and runs right after the last other test that uses that
server; a server is stopped after its last user, so few engines are alive at once. Tests that
need a server configured like no other start their own with ``tests.support.server``.

Guards: every vLLM engine started during the session, by any route, is written to a ledger
(``runtime/engine/vllm_ledger.py``) and counted at the end; the fast tier runs with engines
forbidden, and a fast-tier test that tries to start one fails. Tiers and switches:
tests/README.md.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployment.processes import ChildProcess
from runtime.engine.vllm_ledger import FORBID_ENV, LEDGER_ENV
from tests.support import kv_events
from tests.support.otlp import Receiver
from tests.support.server import (
    DEFAULT_MODEL_DIR,
    REPO,
    ServerProcess,
    free_port,
    start_runtime,
)

GUARDED_KEY = "s3cret-key"  # the guarded server's key (from a file: ``guarded_key_file``)
GUARDED_MAX_CONNECTIONS = 48  # the explainer tests open up to ~10 at once
GUARDED_OPERATOR_KEY = "s3cret-operator-key"  # its operator key (operator routes)
LORA_KEY = "adapter-test-key"  # the LoRA server's key
LORA_OPERATOR_KEY = "adapter-operator-key"  # the LoRA server's operator key (load, unload)
# Fixtures that start a shared server; tests that use one are reordered and marked below.
SHARED_SERVERS = ("predictor", "guarded_server", "lora_server")


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The default model folder prepared by ``make model``."""
    path = os.environ.get("TEST_MODEL_DIR", str(DEFAULT_MODEL_DIR))
    if not os.path.isfile(os.path.join(path, "config.json")):
        pytest.fail(f"{path} holds no model: run `make model` first")
    return path


@pytest.fixture(scope="session")
def predictor(model_dir: str) -> Iterator[ServerProcess]:
    """The real ``python -m runtime`` with SmolLM2, started once per test session.

    ``predictor.url`` is its HTTP base URL, ``predictor.grpc_port`` its gRPC port. Its last
    test (``test_drain.py``) drains it with SIGTERM.
    """
    external = os.environ.get("TEST_PREDICTOR_URL")  # developer shortcut: reuse a running server
    if external:
        server = ServerProcess([], port=int(external.rsplit(":", 1)[1]), name="external")
        server.grpc_port = int(os.environ["TEST_PREDICTOR_GRPC_PORT"])  # type: ignore[attr-defined]
        yield server
        return
    # A 2048-token context (a vLLM engine argument, passed through) keeps the KV cache small
    # and makes "prompt longer than the context" cheap to test. Tool calling as documented for
    # SmolLM2 (README, "Structured outputs and tool calls"): hermes, its ChatML tool-call format.
    # The drain timeout is long enough for the drain test's requests on a loaded machine.
    # KV-cache events on (a ZMQ publisher, as llm-d's precise prefix-cache routing needs).
    kv_port = free_port()
    server = start_runtime(model_dir=model_dir, extra=[
        "--max-model-len=2048", "--enable-auto-tool-choice", "--tool-call-parser=hermes",
        "--drain_timeout=120", kv_events.engine_flag(kv_port)], name="predictor")
    server.kv_events_port = kv_port  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def guarded_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guarded server's key as a mounted Secret holds it: a file (rotated by one test,
    then restored)."""
    path = tmp_path_factory.mktemp("secret") / "api-key"
    path.write_text(GUARDED_KEY + "\n")
    return path


@pytest.fixture(scope="session")
def guarded_server(model_dir: str, guarded_key_file: Path) -> Iterator[ServerProcess]:
    """The runtime with a key (``GUARDED_KEY``, from a file), a two-sequence engine and no
    waiting room (``--max_waiting_requests=0``), small request limits, at most
    ``GUARDED_MAX_CONNECTIONS`` HTTP connections, operator routes on,
    and vLLM's listener flags and request logging (ignored with a warning / logging on).

    ``server.vllm_port`` is the port given to vLLM's ``--port`` (must stay unused). Users:
    ``runtime/test_guarded_server.py``, ``explainers/test_auth.py`` (the keyed predictor);
    its last test signals it twice (``test_drain.py``)."""
    from deployment.processes import free_port

    vllm_port = free_port()
    server = start_runtime(model_dir=model_dir, name="guarded", extra=[
        "--max-model-len=1024", "--max-num-seqs=2", f"--api_key_file={guarded_key_file}",
        "--max_waiting_requests=0", "--max_n=2", "--max_batch_size=2",
        "--max_tokens_limit=800", "--max_stop_sequences=2", "--default_max_tokens=5",
        "--enable_operator_routes=true", "--operator_key", GUARDED_OPERATOR_KEY,
        "--drain_timeout=300", f"--max_connections={GUARDED_MAX_CONNECTIONS}",
        "--host", "0.0.0.0", "--port", str(vllm_port), "--enable-log-requests"])
    server.vllm_port = vllm_port  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def lora_allowed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the LoRA server loads adapters from (``--allowed_adapter_dirs``), for tests'
    own adapters; the adapter cache is the other."""
    return tmp_path_factory.mktemp("allowed-adapters")


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[Receiver]:
    """A real OTLP/gRPC trace receiver in the test process; ``lora_server`` exports to it."""
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def lora_server(model_dir: str, lora_adapters: dict[str, Path], lora_allowed_dir: Path,
                otlp_receiver: Receiver) -> Iterator[ServerProcess]:
    """The runtime with LoRA: static adapters ``attn-a`` (``name=path``) and ``mlp-b`` (JSON
    form), loading at run time on (``--max_adapters 3``) from the adapter cache and
    ``lora_allowed_dir``, two adapter slots, key ``LORA_KEY``, operator key
    ``LORA_OPERATOR_KEY`` (loads, unloads and vLLM's operator routes, which are on), traces
    exported to ``otlp_receiver`` (tracing is set when the engine starts, so the traces
    tests share this server rather than start one more engine).

    Users: ``runtime/test_adapters.py``, ``runtime/test_tracing_served.py``,
    ``benchmarks/test_adapters_run.py``; its last test kills its engine
    (``runtime/test_health.py``)."""
    import json

    static = ["--lora-modules", f"attn-a={lora_adapters['attn-a']}",
              json.dumps({"name": "mlp-b", "path": str(lora_adapters["mlp-b"])})]
    server = start_runtime(model_dir=model_dir, name="lora", extra=[
        "--max-model-len=2048", "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2",
        *static, "--enable_adapter_loading", "true", "--api_key", LORA_KEY,
        "--max_adapters", "3", "--operator_key", LORA_OPERATOR_KEY,
        f"--allowed_adapter_dirs={lora_adapters['attn-c'].parent},{lora_allowed_dir}",
        "--enable_operator_routes", "true", f"--otlp-traces-endpoint={otlp_receiver.endpoint}"],
        # OpenTelemetry's batch processor exports every 5 s by default: each traces test would
        # wait that long for its spans (the runtime's and vLLM's both read this variable)
        env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        yield server
    finally:
        server.stop()


def _model_fingerprint(model_dir: str) -> str:
    """What the adapters are built from: the base model's config and weights (names, sizes)."""
    h = hashlib.sha256()
    for p in sorted(Path(model_dir).iterdir()):
        if p.suffix in (".json", ".safetensors"):
            h.update(f"{p.name}:{p.stat().st_size}".encode())
            if p.suffix == ".json":
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def lora_adapters(model_dir: str) -> dict[str, Path]:
    """The four example LoRA adapters of the model (``deployment.adapters.EXAMPLES``), built
    with peft once per base model and kept under .cache: the folder is keyed by the base
    model's fingerprint and written whole (built aside, then renamed), so a run cut short
    leaves no half-built adapter behind."""
    from deployment.adapters import EXAMPLES, build_examples

    cache = REPO / ".cache" / f"adapters-{_model_fingerprint(model_dir)}"
    if not cache.is_dir():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".adapters-", dir=cache.parent))
        try:
            build_examples(model_dir, tmp)
            try:
                os.rename(tmp, cache)
            except OSError:  # another session renamed its copy first: use that one
                if not cache.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {spec.name: cache / spec.name for spec in EXAMPLES}


# ---------------------------------------------------------------- order, marks, stops

def _module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _servers_of(item: pytest.Item) -> set[str]:
    return set(getattr(item, "fixturenames", ())) & set(SHARED_SERVERS)


def _destroys(item: pytest.Item) -> str | None:
    mark = item.get_closest_marker("destroys")
    return mark.args[0] if mark else None


def _group_modules(items: list[pytest.Item]) -> list[pytest.Item]:
    """Modules that share a server other than the predictor run next to each other (at the
    place of the last of them), so that server is alive for as short a time as possible.
    Whole modules move, so module-scoped fixtures are still set up once."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(_module_of(item), []).append(item)
    order = list(modules)
    for server in SHARED_SERVERS[1:]:
        users = [m for m in order
                 if any(server in _servers_of(i) and _destroys(i) != server for i in modules[m])]
        if len(users) < 2:
            continue
        moved = users[:-1]
        rest = [m for m in order if m not in moved]
        last = rest.index(users[-1])
        order = rest[:last] + moved + rest[last:]
    return [i for m in order for i in modules[m]]


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark, order and schedule the stops of the shared servers.

    - A test that uses a shared server is ``slow`` even if its module forgot the marker: the
      fast tier must never start an engine.
    - Modules sharing a server run together; a test marked ``destroys(server)`` runs right
      after the last other user of that server (and, if none, keeps its place).
    - ``config._last_user``: for each server, the test after which it is stopped.
    """
    for item in items:
        if _servers_of(item) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
    items[:] = _group_modules(items)
    for server in SHARED_SERVERS:
        doomed = [i for i in items if _destroys(i) == server]
        for victim in doomed:
            items.remove(victim)
        users = [n for n, i in enumerate(items) if server in _servers_of(i)]
        at = users[-1] + 1 if users else len(items)
        items[at:at] = doomed


def pytest_collection_finish(session: pytest.Session) -> None:
    last: dict[str, str] = {}
    for item in session.items:  # after -m / -k deselection: what will run
        for server in _servers_of(item):
            last[server] = item.nodeid
    session.config._last_user = last  # type: ignore[attr-defined]


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop a shared server after its last test: fewer engines alive at once. (The fixture's
    own finalizer stops it again at the end of the session, which is then a no-op.)"""
    last = getattr(item.config, "_last_user", {})
    funcargs = getattr(item, "funcargs", {})
    for server, nodeid in last.items():
        if nodeid == item.nodeid and nextitem is not None and server in funcargs:
            funcargs[server].stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    """A failed test's report carries the log tail of every server it used (as vLLM's test
    fixture dumps its server's log): a shared server's log is otherwise never shown, and the
    server's side of a failure (a refused connection, a 500) is only in it."""
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, ChildProcess):
                report.sections.append((f"server log: {name}", value.log_tail(80)))
    return report


# ---------------------------------------------------------------- the engine ledger

def pytest_configure(config: pytest.Config) -> None:
    """Every engine this session starts (its children inherit the variable) is written to a
    ledger of this process's own (a worker's own under xdist)."""
    config.addinivalue_line("markers", "destroys(server): ends the shared server it names; "
                            "runs after every other test that uses it")
    if os.environ.get("TEST_ENGINE_LEDGER_OWNER") is None:
        ledger = REPO / ".cache" / f"engine-starts-{os.getpid()}.log"
        ledger.parent.mkdir(parents=True, exist_ok=True)
        ledger.write_text("")
        os.environ[LEDGER_ENV] = str(ledger)
        os.environ["TEST_ENGINE_LEDGER_OWNER"] = str(os.getpid())


def _ledger(path: str | None = None) -> list[str]:
    path = path or os.environ.get(LEDGER_ENV)
    if not path or not os.path.exists(path):
        return []
    return Path(path).read_text().splitlines()


def _module_seconds(terminalreporter: pytest.TerminalReporter) -> list[tuple[float, str]]:
    """Seconds spent per test module (setup, call and teardown), the costliest first."""
    totals: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                module = report.nodeid.split("::", 1)[0]
                totals[module] = totals.get(module, 0.0) + report.duration
    return sorted(((seconds, module) for module, seconds in totals.items()), reverse=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the suite cost, for the next change to see (CI prints it under the durations):
    the modules that took longest, then the engine-start count."""
    if os.environ.get("TEST_ENGINE_LEDGER_OWNER") != str(os.getpid()):
        return
    modules = _module_seconds(terminalreporter)
    if modules:
        terminalreporter.section(f"time per module ({sum(s for s, _ in modules):.0f} s)")
        for seconds, module in modules:
            if seconds >= 5:  # the rest are noise
                terminalreporter.write_line(f"{seconds:8.1f}s {module}")
    lines = _ledger()
    refused = sum("REFUSED" in line for line in lines)
    terminalreporter.section(f"vLLM engine starts: {len(lines) - refused}"
                             + (f" (and {refused} refused)" if refused else ""))
    for line in lines:
        terminalreporter.write_line(line[:300])
    path = os.environ.get(LEDGER_ENV)
    if path:
        Path(path).unlink(missing_ok=True)


# What the fast tier must never start: an engine (the runtime, plain vLLM, Ray), or the
# explainer that needs one. Stand-ins (Python's http.server, `sleep`) are fine.
REAL_SERVERS = ("runtime", "vllm.entrypoints", "explainers")


def _real_server(argv: list[str]) -> str | None:
    """The module of ``python -m MODULE`` (or ``ray``) if it is one of the real servers."""
    if argv and os.path.basename(argv[0]) in ("ray", "vllm"):
        return os.path.basename(argv[0])
    for flag, module in itertools.pairwise(argv):
        if flag == "-m" and module.startswith(REAL_SERVERS):
            return module
    return None


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_engine(request: pytest.FixtureRequest,
                                monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In a test not marked ``slow``, starting a real server is an error, not a slow pass.

    Two nets: a server process started through ``deployment.processes.ChildProcess`` fails
    the test at once; and an engine started by any other route (``subprocess``, a ``bash -c``
    template, a tool) is refused by the engine core itself (``KSERVE_LLM_NO_ENGINE``, set here
    for the test) and shows in the ledger, which fails the test afterwards."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return

    start = ChildProcess.start

    def guarded(self: ChildProcess) -> object:
        module = _real_server(self.argv)
        if module is not None:
            pytest.fail(f"a fast-tier test started {module}: mark it slow (tests/README.md)")
        return start(self)

    monkeypatch.setattr(ChildProcess, "start", guarded)
    monkeypatch.setenv(FORBID_ENV, "1")
    ledger = os.environ.get(LEDGER_ENV)  # the session's (a test may point its own elsewhere)
    before = len(_ledger(ledger))
    yield
    started = _ledger(ledger)[before:]
    if started:
        pytest.fail(f"a fast-tier test started a vLLM engine (refused): {started}",
                    pytrace=False)
