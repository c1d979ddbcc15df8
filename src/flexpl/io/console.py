"""The console every command prints to (stderr, rich), its tables and their number format, and
the one progress bar of ``run``, ``compare``, ``sweep``, ``plan`` and the dist launcher.

Below the CLI (engine, planner, sweep) code prints through this module, so nothing under
``engine/`` or ``costs/`` needs to import the CLI.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
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


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1,
          caption: str | None = None) -> Any:
    """A rich table as every command prints one: title (and caption) at the left, the first ``left``
    columns left-aligned (names), the others right-aligned (numbers); ``rows`` hold the cells as text
    (numbers through :func:`fmt`)."""
    from rich.table import Table

    t = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i < left else "right")
    for r in rows:
        t.add_row(*r)
    return t


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
