"""The Bearer API key, from a flag, the environment or a file, checked in constant time.

Why one class for the predictor and the explainer: the key can come from ``--api_key``,
``$API_KEY`` or ``--api_key_file`` (the form a Kubernetes Secret is mounted in). A mounted
Secret changes in place when it is rotated, so the file is re-read whenever its identity
(inode, size, modification time) changes: a rotated key takes effect without a restart.
The key never appears in a repr, a log line or an error message.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import threading

logger = logging.getLogger(__name__)


class ApiKeyError(ValueError):
    """The key's source is unusable (missing or empty file, or both a key and a file given)."""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
    except OSError as exc:
        raise ApiKeyError(f"cannot read the API key file {path}: {exc.strerror}") from None
    if not key:
        raise ApiKeyError(f"the API key file {path} is empty")
    return key


class ApiKey:
    """The key clients must send as ``Authorization: Bearer KEY``; disabled when none is set."""

    def __init__(self, value: str | None = None, file: str | None = None) -> None:
        if value and file:
            raise ApiKeyError("give the API key either directly or as a file, not both")
        self._file = file
        self._value = value.encode() if value else None
        self._stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()  # gRPC handlers may run on worker threads
        if file:
            self._value = _read(file)
            self._stamp = self._identity()

    @classmethod
    def from_sources(cls, flag: str | None, file: str | None,
                     env_var: str = "API_KEY") -> ApiKey:
        """The flag, else the file, else ``$env_var``; none of them: no key."""
        if flag and file:
            raise ApiKeyError("--api_key and --api_key_file are mutually exclusive")
        if file:
            return cls(file=file)
        return cls(value=flag or os.environ.get(env_var) or None)

    @property
    def enabled(self) -> bool:
        return self._value is not None

    def _identity(self) -> tuple[int, int, int] | None:
        assert self._file is not None
        try:
            st = os.stat(self._file)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> bytes | None:
        """The key in force now; a changed file is re-read (a broken one keeps the old key)."""
        if self._file is None:
            return self._value
        stamp = self._identity()
        if stamp is not None and stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        self._value = _read(self._file)
                        logger.info("API key file changed: new key in force")
                    except ApiKeyError as exc:
                        logger.warning("%s; the previous key stays in force", exc)
                    self._stamp = stamp
        return self._value

    def accepts(self, authorization: str | bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries the key (always true when no key
        is set)."""
        key = self.current()
        if key is None:
            return True
        if authorization is None:
            return False
        raw = authorization.encode("latin-1", "replace") if isinstance(authorization, str) \
            else authorization
        scheme, _, token = raw.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key)

    def header(self) -> dict[str, str]:
        """The header a client of a server protected by this key sends (empty without a key)."""
        key = self.current()
        return {"Authorization": f"Bearer {key.decode()}"} if key else {}

    def __repr__(self) -> str:
        source = "file" if self._file else "value" if self._value else "none"
        return f"ApiKey(source={source}, key=<hidden>)"


SECRET_FLAGS = ("--api_key", "--api-key", "--predictor_api_key", "--predictor-api-key")
# A key flag inside a script (`bash -c "... vllm serve ... --api-key KEY ..."`): the flag, then
# `=` or blanks (a `\`-newline continuation included), then its value, quoted or not.
_SCRIPT_SECRET = re.compile(
    r"(?<![\w-])(" + "|".join(map(re.escape, SECRET_FLAGS)) + r")"
    r"(=|(?:[ \t]|\\\n)+)"
    r"(\"(?:[^\"\\]|\\.)*\"|\\\"[^\"]*\\\"|'[^']*'|(?:[^\s\\;&|)]|\\.)+)")


def _redact_script(script: str) -> str:
    return _SCRIPT_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}***", script)


def redact_argv(argv: list[str] | tuple[str, ...]) -> list[str]:
    """A command line fit to print: the values of key flags replaced by ``***``.

    Why: tools that print the commands they run (the local runner, the Ray bootstrap) must not
    print the key that a manifest or an operator passed on a command line. A key flag is found
    as its own argument (``--api-key KEY``, ``--api-key=KEY``) and inside any argument that
    holds blanks, i.e. a script (``bash -c "... vllm serve ... --api-key KEY ..."``, as
    KServe's LLMInferenceService template runs), in both forms there too.
    """
    out: list[str] = []
    hide_next = False
    for token in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        flag, eq, _value = token.partition("=")
        if flag in SECRET_FLAGS:
            if eq:
                out.append(f"{flag}=***")
            else:
                out.append(token)
                hide_next = True
            continue
        out.append(_redact_script(token) if any(ch.isspace() for ch in token) else token)
    return out
