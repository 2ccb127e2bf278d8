"""The explainer's own API key, and its key for a predictor that requires one.

Against the real predictor with a key (the session's guarded server) and real ``python -m explainers``
processes: every route but health needs the explainer's key (from ``--api_key``,
``$API_KEY`` or ``--api_key_file``, re-read when the file changes), the explainer reaches the
keyed predictor with ``--predictor_api_key``, ``$PREDICTOR_API_KEY`` or
``--predictor_api_key_file``, and neither key ever shows in the explainer's log.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import httpx
import pytest

from tests.conftest import GUARDED_KEY
from tests.explainers.conftest import MODEL, explain, start_explainer
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

PREDICTOR_KEY = GUARDED_KEY
EXPLAINER_KEY = "explainer-" + secrets.token_hex(8)
CHAT = {"messages": [{"role": "user", "content": "Alice lives in Paris. Bob lives in Rome."}],
        "response": "Rome.", "html": False}
HEALTH_ROUTES = ["/", "/v2/health/live", "/v2/health/ready", f"/v1/models/{MODEL}"]
PROTECTED_GETS = ["/v1/explainer/methods", "/v1/models", "/metrics"]
UNAUTHORIZED = {"error": "missing or invalid API key: send 'Authorization: Bearer <key>'",
                "type": "Unauthorized"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def write_key(path: Path, key: str) -> None:
    """Replace the file the way a Kubernetes Secret mount changes: a new file swapped in."""
    tmp = path.with_suffix(".new")
    tmp.write_text(key + "\n")
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def keyed_predictor(guarded_server: ServerProcess) -> ServerProcess:
    """The real runtime requiring ``PREDICTOR_KEY`` on its inference routes: the session's
    guarded server (tests/conftest.py), one engine start fewer than a server of its own."""
    return guarded_server


def host(server: ServerProcess) -> str:
    return server.url.split("://", 1)[1]


def assert_refused(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json() == UNAUTHORIZED


def assert_keys_not_logged(server: ServerProcess) -> None:
    log = server.log()
    assert PREDICTOR_KEY not in log and EXPLAINER_KEY not in log


def assert_explains(server: ServerProcess, key: str | None) -> None:
    r = explain(server, CHAT, headers=bearer(key) if key else None)
    assert r.status_code == 200, r.text
    [e] = r.json()["explanations"]
    assert e["baseline_logprob"] < 0 and len(e["seq_attr"]) == 2


def test_flags_protect_every_route_but_health(keyed_predictor: ServerProcess,
                                              model_dir: str) -> None:
    # a misspelt flag is ignored with a warning that names it but never shows its value
    typo = f"--predictor-api-key={PREDICTOR_KEY}"
    server = start_explainer(host(keyed_predictor), model_dir, name="explainer-key-flags",
                             extra=["--methods=leave_one_out", f"--api_key={EXPLAINER_KEY}",
                                    f"--predictor_api_key={PREDICTOR_KEY}", typo])
    try:
        assert "ignoring unknown arguments: --predictor-api-key" in server.log()
        for path in HEALTH_ROUTES:  # probes carry no key
            assert httpx.get(server.url + path, timeout=10).status_code == 200, path
        assert_refused(explain(server, CHAT))
        assert_refused(explain(server, CHAT, headers=bearer("wrong")))
        assert_refused(explain(server, CHAT, headers={"Authorization": EXPLAINER_KEY}))
        for path in PROTECTED_GETS:
            assert_refused(httpx.get(server.url + path, timeout=10))
            assert httpx.get(server.url + path, headers=bearer(EXPLAINER_KEY),
                             timeout=10).status_code == 200, path
        assert_explains(server, EXPLAINER_KEY)  # through the keyed predictor
    finally:
        server.stop()
    assert_keys_not_logged(server)


def test_key_files_are_reread_when_rotated(keyed_predictor: ServerProcess, model_dir: str,
                                           tmp_path: Path) -> None:
    own, theirs = tmp_path / "api_key", tmp_path / "predictor_api_key"
    write_key(own, EXPLAINER_KEY)
    write_key(theirs, PREDICTOR_KEY)
    server = start_explainer(host(keyed_predictor), model_dir, name="explainer-key-files",
                             extra=["--methods=leave_one_out", f"--api_key_file={own}",
                                    f"--predictor_api_key_file={theirs}"])
    try:
        assert_refused(explain(server, CHAT))
        assert_explains(server, EXPLAINER_KEY)
        rotated = EXPLAINER_KEY + "-rotated"
        write_key(own, rotated)
        methods = f"{server.url}/v1/explainer/methods"
        assert_refused(httpx.get(methods, headers=bearer(EXPLAINER_KEY), timeout=10))
        assert httpx.get(methods, headers=bearer(rotated), timeout=10).status_code == 200
        # a predictor key file that changes to a wrong key is sent as is: 502 naming the flags
        write_key(theirs, "not-the-predictor-key")
        r = explain(server, CHAT, headers=bearer(rotated))
        assert r.status_code == 502, r.text
        assert "--predictor_api_key_file" in r.json()["error"]
        write_key(theirs, PREDICTOR_KEY)
        assert_explains(server, rotated)
    finally:
        server.stop()
    assert_keys_not_logged(server)


def test_keys_from_the_environment(keyed_predictor: ServerProcess, model_dir: str) -> None:
    server = start_explainer(host(keyed_predictor), model_dir, name="explainer-key-env",
                             extra=["--methods=leave_one_out"],
                             env={"API_KEY": EXPLAINER_KEY, "PREDICTOR_API_KEY": PREDICTOR_KEY})
    try:
        assert_refused(explain(server, CHAT))
        assert_explains(server, EXPLAINER_KEY)
    finally:
        server.stop()
    assert_keys_not_logged(server)


def test_without_the_predictor_key_explain_is_502_naming_the_flag(
        keyed_predictor: ServerProcess, model_dir: str) -> None:
    """No keys at all: the explainer is open (as before) and ready (the predictor's health
    routes need no key), but the keyed predictor refuses its scoring requests."""
    server = start_explainer(host(keyed_predictor), model_dir, name="explainer-no-key",
                             extra=["--methods=leave_one_out"])
    try:
        assert httpx.get(f"{server.url}/v1/explainer/methods", timeout=10).status_code == 200
        r = explain(server, CHAT)
        assert r.status_code == 502, r.text
        msg = r.json()["error"]
        assert "answered 401" in msg and "sent no key" in msg, msg
        assert "--predictor_api_key" in msg
    finally:
        server.stop()
