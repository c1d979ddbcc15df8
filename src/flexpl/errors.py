"""Errors the command line turns into an exit code: ``UserError`` (one line, exit 2, never a traceback) and
``Diverged`` (exit 3)."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """A mistake in the user's input (scenario, plan, command line, data files).

    The message is one line that names the field and says what is allowed; the CLI
    prints it on stderr and exits with code 2.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class MissingData(UserError):
    """A dataset's files are neither on this machine nor downloadable (a ``data.fallback`` may step in).

    Raised by the dataset loaders of ``flexpl.data``.
    """


class Diverged(Exception):
    """Training produced a non-finite loss: the run stops (exit 3), keeping the rounds completed so far."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.summary: dict[str, Any] | None = None  # set by the simulator: the summary of the rounds completed
        self.rows: list[dict[str, Any]] = []
