"""Scenario schema, ``tracking:``: the experiment trackers a run is logged to (as ``--track``).

``tracking: ["tensorboard", "tensorboard:runs/tb", "mlflow:http://127.0.0.1:5000"]``: each entry
is ``tensorboard[:DIR]`` or ``mlflow[:URI]``, exactly what ``--track`` takes. The command
line's ``--track`` values are added to them (an entry given twice is tracked once). Tracking
never changes a result, so the key is left out of ``scenario_sha256`` (see
:meth:`flexpl.config.scenario.Scenario.digest`) and out of ``config.yaml`` while it is empty.

Part of the scenario schema, :mod:`flexpl.config.scenario`.
"""

from __future__ import annotations

from typing import Any

TRACKERS = ("tensorboard", "mlflow")


def tracker_problem(spec: Any) -> str | None:
    """What is wrong with one tracker spec (``tensorboard[:DIR]`` / ``mlflow[:URI]``), or None if it is good."""
    if not isinstance(spec, str):
        return f"must be a string such as tensorboard or mlflow:URI, got {spec!r}"
    kind, sep, where = spec.partition(":")
    if kind not in TRACKERS:
        return f"unknown tracker '{kind}'; use tensorboard[:DIR] or mlflow[:URI]"
    if sep and not where:
        return f"'{spec}' names no {'folder' if kind == 'tensorboard' else 'URI'} after ':'"
    return None


def check_tracking(specs: Any) -> list[str]:
    """Validate ``tracking:`` (a list of tracker specs); raises ``ValueError`` naming the entry and the fix."""
    if not isinstance(specs, list):
        raise ValueError(f"tracking: must be a list such as [tensorboard, 'mlflow:http://HOST:PORT'], "
                         f"got {specs!r}")
    for i, spec in enumerate(specs):
        if (why := tracker_problem(spec)) is not None:
            raise ValueError(f"tracking[{i}]: {why}")
    return specs
