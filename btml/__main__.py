"""``python -m btml``: the same as the ``btml`` command."""

from btml.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
