"""Several seeds, spread shown: aggregate one strategy's (or sweep cell's) runs over seeds.

``flexpl compare --seeds 0,1,2`` and ``flexpl sweep --seeds 0,1,2`` run every strategy
(cell) once per seed, into ``<strategy>/seed<k>/``, and summarise each one with
:func:`aggregate_seeds`: for every numeric column ``c`` of the per-seed summaries it
writes ``c_mean`` and ``c_std`` (the *sample* standard deviation, ddof = 1; 0 for a
single seed), and, where some seeds have no value (None, empty or NaN, e.g. a target
accuracy never reached), ``c_n`` = how many seeds have one; mean and std are then taken
over those seeds only. A column that no seed has a value for gets ``c_mean = c_std =
None`` and ``c_n = 0``.

:func:`within_spread` marks the strategies whose mean accuracy is within the spread of
the best one (difference <= the larger of the two standard deviations): such a difference
is not one the seeds can tell apart, and the printed table says so with a "≈".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from flexpl.errors import UserError

SEED_DIR = "seed{}"  # a seed's run folder inside its strategy's (cell's) folder
_SEED_RE = re.compile(r"^(.*)/seed(\d+)$")


def parse_seeds(raw: str | None) -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]``; None stays None. A bad list is a ``UserError`` naming --seeds."""
    if raw is None:
        return None
    parts = [p.strip() for p in str(raw).split(",")]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"--seeds: '{raw}' is not a comma-separated list of integers, "
                        "e.g. --seeds 0,1,2") from None
    if any(s < 0 for s in seeds):
        raise UserError(f"--seeds: seeds must be non-negative integers, got '{raw}'")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds: repeated seed in '{raw}'; list each seed once")
    return seeds


def _number(v: Any) -> float | None:
    """The value as a float if it is a finite number, None if it is missing; raises TypeError otherwise."""
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise TypeError
    if isinstance(v, int | float):
        return float(v) if math.isfinite(v) else None
    raise TypeError


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1; 0.0 for one value; None, None for none)."""
    n = len(values)
    if n == 0:
        return None, None
    m = sum(values) / n
    if n == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def aggregate_seeds(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One row over seeds: ``<col>_mean``/``<col>_std`` per numeric column, ``<col>_n`` where some are missing.

    Parameters
    ----------
    rows
        The per-seed summaries of one strategy (or sweep cell): flat mappings. A column is
        numeric when every seed's value is a number or missing (None, "" or NaN); other
        columns (names, plan descriptions) are copied from the first row when all seeds
        agree and dropped otherwise. ``seed`` itself is not aggregated.

    Returns
    -------
    dict
        The text columns, then ``seeds`` (how many rows), then for each numeric column
        ``c``: ``c_mean``, ``c_std`` (sample std, ddof = 1) and, if any seed lacks a value,
        ``c_n``.
    """
    out: dict[str, Any] = {}
    if not rows:
        return out
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    numeric: list[tuple[str, list[float], int]] = []
    for c in cols:
        if c == "seed":
            continue
        vals = [r.get(c) for r in rows]
        try:
            nums = [_number(v) for v in vals]
        except TypeError:  # text (or nested) column: keep it if every seed agrees
            if all(isinstance(v, str | int | float | bool) or v is None for v in vals) and len(set(map(str, vals))) == 1:
                out[c] = vals[0]
            continue
        present = [x for x in nums if x is not None]
        numeric.append((c, present, len(rows)))
    out["seeds"] = len(rows)
    for c, present, n in numeric:
        m, s = mean_std(present)
        out[f"{c}_mean"] = m
        out[f"{c}_std"] = s
        if len(present) < n:
            out[f"{c}_n"] = len(present)
    return out


def within_spread(aggs: Sequence[Mapping[str, Any]], column: str = "final_accuracy") -> list[bool]:
    """For each aggregate, whether its ``column`` mean is within the spread of the best mean.

    The best is the highest mean; another strategy is within the spread when
    ``best_mean - its_mean <= max(best_std, its_std)``. The best itself is marked only if
    some other strategy is within its spread (otherwise nothing is marked).
    """
    means = [a.get(f"{column}_mean") for a in aggs]
    stds = [a.get(f"{column}_std") or 0.0 for a in aggs]
    ok = [i for i, m in enumerate(means) if isinstance(m, int | float) and math.isfinite(m)]
    marks = [False] * len(aggs)
    if len(ok) < 2:
        return marks
    b = max(ok, key=lambda i: means[i])
    for i in ok:
        if i != b and means[b] - means[i] <= max(stds[b], stds[i]):
            marks[i] = marks[b] = True
    return marks


def seed_groups(names: Sequence[str]) -> dict[str, list[tuple[int, int]]]:
    """Group run names ``<group>/seed<k>`` by group: group -> [(seed, index in names)] (others left out)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for i, n in enumerate(names):
        m = _SEED_RE.match(n)
        if m:
            out.setdefault(m.group(1), []).append((int(m.group(2)), i))
    return out


def device_energy(summary: Mapping[str, Any], data_nodes: Sequence[str]) -> float | None:
    """Energy (J) spent on the data-holding devices: the sum of ``per_node[n]["energy_j"]`` over them."""
    per_node = summary.get("per_node")
    if not isinstance(per_node, Mapping):
        return None
    vals = [per_node[n].get("energy_j") for n in data_nodes if isinstance(per_node.get(n), Mapping)]
    vals = [v for v in vals if isinstance(v, int | float)]
    return float(sum(vals)) if vals else None
