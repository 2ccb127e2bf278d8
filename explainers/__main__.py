"""``python -m explainers``: see ``explainers.server``."""

from explainers.server import main

if __name__ == "__main__":
    main()
