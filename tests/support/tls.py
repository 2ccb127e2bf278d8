"""Self-signed certificates for HTTPS tests (the local runner's generator, as paths)."""

from __future__ import annotations

from pathlib import Path

from deployment.llmisvc import write_self_signed_tls


def self_signed(folder: Path, stem: str = "tls") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key in ``folder`` (``stem``.crt, ``stem``.key)."""
    write_self_signed_tls(folder, stem)
    return folder / f"{stem}.crt", folder / f"{stem}.key"
