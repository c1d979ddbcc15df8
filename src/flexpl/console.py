"""The console every command prints to (stderr, rich) and the number format of its tables.

Below the CLI (engine, planner, sweep) code prints through this module, so nothing under
``engine/`` or ``costs/`` needs to import the CLI.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any


def make_console(quiet: bool = False) -> Any:
    """A rich Console on stderr; a fixed width (``COLUMNS``, default 150) when stderr is not a terminal."""
    from rich.console import Console

    width = None if sys.stderr.isatty() else int(os.environ.get("COLUMNS", "150"))
    return Console(stderr=True, quiet=quiet, highlight=False, width=width)


def fmt(v: Any) -> str:
    """A table cell: 4 significant digits, scientific from 1e6 and below 1e-3, '-' for NaN/inf."""
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10**6:
        return f"{v:.3e}"
    return str(v)
