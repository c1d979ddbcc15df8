"""The console every command prints to (stderr, rich), the number format of its tables, and
the one progress bar of ``run``, ``compare``, ``sweep``, ``plan`` and the dist launcher.

Below the CLI (engine, planner, sweep) code prints through this module, so nothing under
``engine/`` or ``costs/`` needs to import the CLI.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def progress(quiet: bool = False, console: Any = None) -> Iterator[Any]:
    """The progress display of every command: a rich ``Progress`` (enter it with ``with``).

    Columns: the task's description, a bar, done/total, the task's ``info`` field (empty
    when the task has none) and the elapsed time. ``quiet`` hides it (tasks still count);
    ``console`` defaults to :func:`make_console`. Add one task per bar::

        with progress(quiet) as bar:
            task = bar.add_task("rounds", total=10, info="")
            bar.update(task, advance=1, info="acc 0.91")
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    class _Info(TextColumn):  # the ``info`` field, or nothing for a task added without one
        def render(self, task: Any) -> Any:
            from rich.text import Text

            return Text(str(task.fields.get("info", "")))

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Info(""),
                  TimeElapsedColumn(), console=console if console is not None else make_console(quiet),
                  disable=quiet, transient=False) as bar:
        yield bar
