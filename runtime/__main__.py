"""``python -m runtime``: parse the command line, then serve."""

from __future__ import annotations


def main() -> None:
    import sys

    from runtime import cli, logs, server
    from runtime.auth import ApiKeyError
    from runtime.settings import EngineArgsError

    logs.configure()
    try:
        if sys.argv[1:2] == ["serve"]:  # the `vllm serve` contract (runtime.serve_cli)
            from runtime import serve_cli

            settings = serve_cli.parse(sys.argv[2:])
        else:
            settings = cli.parse()
        server.run(settings)
    except (ApiKeyError, EngineArgsError) as exc:  # a start-up mistake: one clear line, no traceback
        print(f"python -m runtime: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # the engine core is spawned: the guard is required
    main()
