"""Cost to a target accuracy: the round, bytes, joules, seconds and FLOPs a run needs to reach it.

A fixed number of rounds hides the trade-off between plans: one plan may pass 0.70 test
accuracy early and cheaply and end lower, another may end higher at a larger cost. For
each target ``A`` (``--target-accuracy A`` or ``evaluation.targets``) a run reports the
first round whose test accuracy is at least ``A`` and the cumulative costs at the end of
that round, read from the run's per-round rows (``rounds.csv``), so the two always agree:

    to_target: {"0.7": {"round": 3, "bytes": ..., "energy_j": ..., "device_energy_j": ...,
                        "sim_time_s": ..., "flops": ...}, "0.75": null}

``null`` means the target was never reached (not a zero cost). ``comparison.csv`` and
``sweep.csv`` carry the same numbers flat, one column per (cost, target):
``bytes_to_0.7``, ``energy_j_to_0.7``, ``device_energy_j_to_0.7``, ``sim_time_s_to_0.7``,
``flops_to_0.7``, ``round_to_0.7`` (empty where never reached) and ``reached_0.7`` (1 or 0;
its mean over seeds is the share of seeds that reached the target).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# The costs reported at a target, as named in rounds.csv (all cumulative since round 1).
COSTS = ("bytes", "energy_j", "device_energy_j", "sim_time_s", "flops")
FIELDS = ("round", *COSTS)


def target_key(a: float) -> str:
    """The key of target ``a`` in summary.json and in column names: ``0.7`` -> ``"0.7"``."""
    return f"{float(a):g}"


def as_float(v: Any) -> float:
    """``v`` as a float, NaN where it is not a number (a lenient parse of CSV and JSON cells)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def first_reached(rows: Sequence[Mapping[str, Any]], target: float) -> Mapping[str, Any] | None:
    """The first row whose ``accuracy`` is at least ``target`` (NaN or missing never counts), or None."""
    for r in rows:
        acc = as_float(r.get("accuracy"))
        if math.isfinite(acc) and acc >= target:
            return r
    return None


def cost_to_targets(rows: Sequence[Mapping[str, Any]], targets: Sequence[float]) -> dict[str, dict[str, Any] | None]:
    """For each target, the first round that reaches it and the cumulative costs in that round's row.

    ``rows`` are the run's per-round rows (as in rounds.csv: cumulative ``bytes``,
    ``energy_j``, ``device_energy_j``, ``sim_time_s``, ``flops``). A target never reached
    maps to None. Keys are :func:`target_key` of each target, in ascending order.
    """
    out: dict[str, dict[str, Any] | None] = {}
    for a in sorted(targets):
        r = first_reached(rows, a)
        if r is None:
            out[target_key(a)] = None
            continue
        hit: dict[str, Any] = {"round": int(as_float(r["round"]))}
        for c in COSTS:
            v = as_float(r.get(c))
            hit[c] = (int(v) if c in ("bytes", "flops") else v) if math.isfinite(v) else None
        out[target_key(a)] = hit
    return out


def reached_all(rows: Sequence[Mapping[str, Any]], targets: Sequence[float]) -> bool:
    """Whether the last row reaches the highest target (what ``stop_at_target`` stops on)."""
    if not targets or not rows:
        return False
    return first_reached(rows[-1:], max(targets)) is not None


def target_columns(to_target: Mapping[str, Mapping[str, Any] | None] | None) -> dict[str, Any]:
    """Flat columns of a run's ``to_target`` for comparison.csv / sweep.csv (None where never reached)."""
    cols: dict[str, Any] = {}
    for key, hit in (to_target or {}).items():
        for c in COSTS:
            cols[f"{c}_to_{key}"] = hit.get(c) if hit else None
        cols[f"round_to_{key}"] = hit.get("round") if hit else None
        cols[f"reached_{key}"] = 1 if hit else 0
    return cols
