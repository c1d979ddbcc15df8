"""The tables the commands print: run summaries, the mean ± std over seeds, the cost to reach each target."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flexpl.io.console import fmt, table


def summary_table(summaries: list[dict[str, Any]], title: str) -> Any:
    """Run summaries: one row per run, the columns of ``results.SUMMARY_COLUMNS``."""
    from flexpl.io.results import SUMMARY_COLUMNS

    return table(title, SUMMARY_COLUMNS, ([fmt(s.get(c)) for c in SUMMARY_COLUMNS] for s in summaries))


def targets_table(summaries: Sequence[Mapping[str, Any]], title: str = "cost to reach each target") -> Any:
    """One row per run and target: the round and cumulative costs there ("-": never reached)."""
    from flexpl.costs.targets import FIELDS

    return table(title, ("run", "target", *FIELDS),  # run: a strategy, or a sweep cell
                 ([str(s.get("strategy")), k, *(fmt(hit[f]) if hit and hit.get(f) is not None else "-" for f in FIELDS)]
                  for s in summaries for k, hit in (s.get("to_target") or {}).items()))


def seeds_table(aggs: list[dict[str, Any]], title: str, key: str = "strategy") -> Any:
    """The comparison over seeds: mean ± std per column; "≈" where a gap is within the spread."""
    from flexpl.io.results import SUMMARY_COLUMNS
    from flexpl.studies.seeds import within_spread

    marks = within_spread(aggs)
    cols = [c for c in SUMMARY_COLUMNS if c != "strategy"]
    if any("device_energy_j_total_mean" in a for a in aggs):
        cols.insert(cols.index("energy_j_total") + 1, "device_energy_j_total")
    rows = []
    for agg, mark in zip(aggs, marks):
        cells = []
        for c in cols:
            m, sd = agg.get(f"{c}_mean"), agg.get(f"{c}_std")
            if m is None:
                cells.append("-")
                continue
            cell = f"{fmt(float(m))} ± {float(sd or 0.0):.2g}"
            if f"{c}_n" in agg:
                cell += f" (n={agg[f'{c}_n']})"
            if c == "final_accuracy" and mark:
                cell = "≈ " + cell
            cells.append(cell)
        rows.append([str(agg.get(key)), *cells])
    return table(title, [key, *cols], rows, caption="≈: final accuracy within the larger std of the best "
                 "strategy's (not separable by these seeds)" if any(marks) else None)
