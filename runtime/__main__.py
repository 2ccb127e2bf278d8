"""``python -m runtime``: parse the command line, then serve."""

from __future__ import annotations


def main() -> None:
    import sys

    from runtime import cli, logs, server
    from runtime.auth import ApiKeyError
    from runtime.cli import EngineArgsError

    logs.configure()
    try:
        server.run(cli.parse())
    except (ApiKeyError, EngineArgsError) as exc:  # a start-up mistake: one clear line, no traceback
        print(f"python -m runtime: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # the engine core is spawned: the guard is required
    main()
