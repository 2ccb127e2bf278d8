"""Health that tells the truth: kill the engine process, readiness and liveness turn false."""

from __future__ import annotations

import os
import signal
import time

import httpx
import psutil

from tests.support.server import start_runtime


def test_engine_death_turns_ready_and_live_false(model_dir: str) -> None:
    server = start_runtime(model_dir=model_dir, extra=["--max-model-len=1024"], name="doomed")
    try:
        url = server.url
        assert httpx.get(url + "/v2/health/ready").status_code == 200
        assert httpx.get(url + "/v2/health/live").status_code == 200
        engine = [p for p in psutil.Process(server.pid).children(recursive=True)
                  if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()]
        if not engine:  # the engine core's process title is set by vLLM; fall back to any child
            engine = psutil.Process(server.pid).children(recursive=True)
        assert engine, "no engine process found"
        for p in engine:
            os.kill(p.pid, signal.SIGKILL)
        killed = time.monotonic()
        ready = live = True
        while time.monotonic() - killed < 5 and (ready or live):
            ready = httpx.get(url + "/v2/health/ready").status_code == 200
            live = httpx.get(url + "/v2/health/live").status_code == 200
            time.sleep(0.2)
        assert not ready and not live, "health still green 5 s after the engine died"
        assert httpx.get(url + "/v1/models/smollm2").status_code == 503
        r = httpx.post(url + "/v2/models/smollm2/generate", json={"text_input": "hi"})
        assert r.status_code == 503
    finally:
        server.stop()
