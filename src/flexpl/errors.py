"""User-facing errors: one line, exit code 2, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (scenario, plan, command line, data files).

    The message is one line that names the field and says what is allowed; the CLI
    prints it on stderr and exits with code 2.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class MissingData(UserError):
    """A dataset's files are neither on this machine nor downloadable (a ``data.fallback`` may step in).

    Raised by the dataset loaders of ``flexpl.data`` (which re-exports it).
    """
