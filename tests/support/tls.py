"""Self-signed certificates for HTTPS tests (the local runner's generator, as paths), and
the certificate a server presents (for certificate rotation)."""

from __future__ import annotations

import hashlib
import ssl
import time
from pathlib import Path

from deployment.llmisvc import write_self_signed_tls


def self_signed(folder: Path, stem: str = "tls") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key in ``folder`` (``stem``.crt, ``stem``.key)."""
    write_self_signed_tls(folder, stem)
    return folder / f"{stem}.crt", folder / f"{stem}.key"


def fingerprint(cert: Path) -> str:
    """SHA-256 of a PEM certificate file's DER bytes."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


def served_fingerprint(port: int) -> str:
    """SHA-256 of the certificate a new TLS handshake with 127.0.0.1:``port`` presents."""
    pem = ssl.get_server_certificate(("127.0.0.1", port))
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def rotate_and_wait(cert: Path, key: Path, port: int, folder: Path,
                    timeout: float = 30.0) -> Path:
    """Replace ``cert``/``key`` in place with a new pair (key first, as rotations write them)
    and wait until new handshakes on ``port`` present it; returns the new certificate."""
    new_cert, new_key = self_signed(folder, "next")
    key.write_bytes(new_key.read_bytes())
    cert.write_bytes(new_cert.read_bytes())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and served_fingerprint(port) != fingerprint(new_cert):
        time.sleep(0.5)
    assert served_fingerprint(port) == fingerprint(new_cert), \
        "a new connection still sees the old certificate"
    return new_cert
