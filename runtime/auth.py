"""The Bearer API key, from a flag, the environment or a file, checked in constant time.

Why one class for the predictor and the explainer: the key can come from ``--api_key``,
``$API_KEY`` or ``--api_key_file`` (the form a Kubernetes Secret is mounted in). A mounted
Secret changes in place when it is rotated, so the file is re-read whenever its identity
(inode, size, modification time) changes: a rotated key takes effect without a restart.
The key never appears in a repr, a log line or an error message.

Keys fail closed: an empty ``--api_key``, ``--api_key_file`` or ``$API_KEY`` refuses to start
(a Secret that came out empty must not leave the server open), and a key file that
disappears or empties refuses every request (401) until a key is back.
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
        self._refuse_all = False  # the key file is gone or empty: nothing is accepted
        self._stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()  # gRPC handlers may run on worker threads
        if file:
            self._value = _read(file)
            self._stamp = self._identity()

    @classmethod
    def from_sources(cls, flag: str | None, file: str | None,
                     env_var: str = "API_KEY", name: str = "api_key") -> ApiKey:
        """``--{name}``, else ``--{name}_file``, else ``$env_var``; none of them: no key. One
        given but empty is an error, not "no key" (fail closed)."""
        check_not_empty(flag, file, env_var, name)
        if flag and file:
            raise ApiKeyError(f"--{name} and --{name}_file are mutually exclusive")
        if file:
            return cls(file=file)
        return cls(value=flag or os.environ.get(env_var) or None)

    @property
    def enabled(self) -> bool:
        return self._file is not None or self._value is not None

    def _identity(self) -> tuple[int, int, int] | None:
        assert self._file is not None
        try:
            st = os.stat(self._file)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> bytes | None:
        """The key in force now; a changed file is re-read. A file that is gone or empty
        leaves no key in force and every request refused, until it holds a key again."""
        if self._file is None:
            return self._value
        stamp = self._identity()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        if stamp is None:
                            raise ApiKeyError(f"the API key file {self._file} is gone")
                        self._value = _read(self._file)
                        if self._refuse_all:
                            logger.warning("API key file holds a key again: requests with it "
                                           "are accepted")
                        else:
                            logger.info("API key file changed: new key in force")
                        self._refuse_all = False
                    except ApiKeyError as exc:
                        logger.warning("%s; every request is refused (401) until it holds a "
                                       "key", exc)
                        self._value, self._refuse_all = None, True
                    self._stamp = stamp
        return self._value

    def accepts(self, authorization: str | bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries the key (always true when no key
        is set)."""
        key = self.current()
        if self._refuse_all:
            return False
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


def check_not_empty(flag: str | None, file: str | None, env_var: str = "API_KEY",
                    name: str = "api_key") -> None:
    """``ApiKeyError`` if a key source is given but empty: the flag, the file's name, or the
    environment variable when it is the source (no flag, no file)."""
    if flag is not None and not flag.strip():
        raise ApiKeyError(f"--{name} is empty: give the key, or leave the flag out")
    if file is not None and not file.strip():
        raise ApiKeyError(f"--{name}_file is empty: give the key file's path, or leave the "
                          "flag out")
    env = os.environ.get(env_var)
    if flag is None and file is None and env is not None and not env.strip():
        raise ApiKeyError(f"${env_var} is set but empty: set the key, or unset the variable")


SECRET_FLAGS = ("--api_key", "--api-key", "--predictor_api_key", "--predictor-api-key",
                "--operator_key", "--operator-key")
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
