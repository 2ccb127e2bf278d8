"""``python -m runtime``: parse the command line, then serve."""

from __future__ import annotations


def main() -> None:
    import logging

    from runtime import cli, server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server.run(cli.parse())


if __name__ == "__main__":  # the engine core is spawned: the guard is required
    main()
