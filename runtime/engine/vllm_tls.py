"""Certificate reload for the HTTPS listener: vLLM's ``SSLCertRefresher`` on uvicorn's context.

Why vLLM's: ``--enable-ssl-refresh`` is vLLM's flag and its refresher watches the key and
certificate files and loads them into the live ``SSLContext``, so that new connections use the
new certificate (cert-manager rotates them in place) without a restart; the runtime applies the
same object to the context its uvicorn server listens with.
"""

from __future__ import annotations

from ssl import SSLContext
from typing import Any

from vllm.entrypoints.launchers.utils.ssl import SSLCertRefresher


def refresh_certificates(context: SSLContext, *, certfile: str, keyfile: str) -> Any:
    """Start watching ``certfile``/``keyfile`` (needs a running event loop); returns the
    refresher (``stop()`` ends the watch)."""
    return SSLCertRefresher(context, key_path=keyfile, cert_path=certfile)
