"""``python -m runtime``: parse the command line, then serve."""

from __future__ import annotations


def main() -> None:
    from runtime import cli, logs, server

    logs.configure()
    server.run(cli.parse())


if __name__ == "__main__":  # the engine core is spawned: the guard is required
    main()
