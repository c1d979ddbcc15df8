"""Errors the command line turns into an exit code: ``UserError`` (one line, exit 2, never a traceback),
``WorkerFailure`` and ``Diverged`` (exit 3)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


class WorkerFailure(UserError):
    """A worker of a run (a distributed rank, a Ray actor) died, hung or failed: one line naming it and the
    round, exit 3 (not the user's input: the run may be started again, with ``--resume`` if it saved)."""


class Diverged(Exception):
    """Training produced a non-finite loss: the run stops (exit 3), keeping the rounds completed so far."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.summary: dict[str, Any] | None = None  # set by the simulator: the summary of the rounds completed
        self.rows: list[dict[str, Any]] = []
def one_line(exc: Any, explain: Callable[[Mapping[str, Any]], str], prefix: str = "", every: bool = False) -> str:
    """A pydantic ``ValidationError`` as one line, ``WHERE: WHAT``, for a :class:`UserError`.

    WHERE is ``prefix`` followed by the problem's location (``nodes[0].profile``: list indices
    in brackets, pydantic's own validator steps left out), or ``scenario`` when both are empty;
    WHAT is ``explain(error)``, the caller's wording for one pydantic error dict. A
    ``value_error`` (raised by one of our validators, whose message already names the field)
    is its message alone. Only the first problem is shown, followed by how many more there are
    (the scenario's errors); with ``every``, each one, joined by "; " (the profiles' errors).
    """
    errors = exc.errors()
    parts = []
    for err in errors if every else errors[:1]:
        if err["type"] == "value_error":
            if not every:
                return str(err.get("ctx", {}).get("error", err["msg"]))
            parts.append(str(err.get("ctx", {}).get("error", err["msg"])))
            continue
        loc = ""
        for part in err.get("loc", ()):
            if isinstance(part, int):
                loc += f"[{part}]"
            elif not str(part).startswith("function-after") and part != "__root__":
                loc += ("." if loc else "") + str(part)
        where = f"{prefix}.{loc}" if prefix and loc and not loc.startswith("[") else prefix + loc
        parts.append(f"{where or 'scenario'}: {explain(err)}")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 and not every else ""
    return "; ".join(parts) + more
