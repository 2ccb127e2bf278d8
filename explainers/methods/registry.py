"""Loading attribution methods from the ``kserve_llm.explainer_methods`` entry-point group.

Why entry points: a third-party package adds a method by declaring an entry point, without
touching this repository; ``--methods`` restricts the server to an allowlist.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from explainers import METHOD_ENTRY_POINT_GROUP
from explainers.methods.base import ExplanationMethod, MethodSettings

logger = logging.getLogger(__name__)


def load_methods(settings: MethodSettings,
                 allow: list[str] | None = None) -> dict[str, ExplanationMethod]:
    """Instantiate the installed methods (only ``allow`` if given), keyed by entry-point name.

    A method that fails to load is skipped with a logged error, unless it was asked for by
    name in ``allow``: then the server must not start silently without it.
    """
    found = {ep.name: ep for ep in entry_points(group=METHOD_ENTRY_POINT_GROUP)}
    if allow:
        missing = [name for name in allow if name not in found]
        if missing:
            raise ValueError(f"unknown method(s) in --methods: {', '.join(missing)}; "
                             f"installed: {', '.join(sorted(found)) or 'none'}")
    methods: dict[str, ExplanationMethod] = {}
    for name in sorted(found):
        if allow and name not in allow:
            continue
        try:
            cls = found[name].load()
            if not (isinstance(cls, type) and issubclass(cls, ExplanationMethod)):
                raise TypeError(f"{found[name].value} is not an ExplanationMethod subclass")
            method = cls(settings)
        except Exception:
            if allow:
                raise
            logger.exception("skipping explainer method %r (%s)", name, found[name].value)
            continue
        methods[name] = method
        logger.info("explainer method %r from %s", name, found[name].value)
    if not methods:
        raise ValueError("no explainer methods are available")
    return methods
