"""``python -m flexpl.cli``: the ``flexpl`` command (what torchrun starts as ``-m flexpl.cli worker``)."""

import sys

from flexpl.cli import main

if __name__ == "__main__":
    sys.exit(main())
