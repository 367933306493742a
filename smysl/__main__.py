"""``python -m smysl``: the ``smysl`` command (the console script's entry point)."""

import sys

from smysl.cli import main

if __name__ == "__main__":  # importing this module runs nothing
    sys.exit(main())
