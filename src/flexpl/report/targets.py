"""The report's cost-to-target parts: accuracy step curves against cumulative costs, and the target table.

Both read only what runs wrote: the per-round rows (rounds.csv) and ``to_target`` in
summary.json (see :mod:`flexpl.costs.targets`). Accuracy is drawn as a step curve: after round
``k`` the model's accuracy is known, and it holds until round ``k + 1`` has been paid for.
"""

from __future__ import annotations

import html
import math
from typing import Any

from flexpl.costs.targets import COSTS, FIELDS

# (column of rounds.csv, unit, axis label) of the three panels
PANELS = [("bytes", "B", "cumulative bytes"), ("energy_j", "J", "cumulative energy"),
          ("sim_time_s", "s", "simulated time")]
TITLE = "Accuracy against cumulative bytes, energy and simulated time"


def targets_of(runs: list[Any]) -> list[str]:
    """Every target key in the runs' summaries, in ascending order of accuracy."""
    keys: set[str] = set()
    for r in runs:
        keys.update((r.summary.get("to_target") or {}).keys())
    return sorted(keys, key=float)


def fig_accuracy_to_target(runs: list[Any]) -> Any:
    """Three panels: accuracy as a step curve against cumulative bytes, energy and time; targets as lines."""
    from flexpl.report.style import eng as _eng
    from flexpl.report.style import figure as _figure
    from flexpl.report.style import log_if_wide as _log_if_wide
    from flexpl.report.style import no_data as _no_data

    fig = _figure(12.5, 3.8)
    axes = fig.subplots(1, len(PANELS))
    targets = targets_of(runs)
    for ax, (col, unit, xlabel) in zip(axes, PANELS):
        xs_all: list[float] = []
        for r in runs:
            pts = [(row.get(col, math.nan), row.get("accuracy", math.nan)) for row in r.rounds]
            pts = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
            if not pts:
                continue
            xs_all += [x for x, _ in pts]
            ax.plot(*zip(*pts), drawstyle="steps-post", lw=1.6, color=r.color, label=r.label)
            ax.scatter(*zip(*pts), s=10, color=r.color, zorder=3)
            for key in targets:  # where this run first reaches each target
                hit = (r.summary.get("to_target") or {}).get(key)
                if hit and hit.get(col) is not None:
                    ax.scatter([hit[col]], [float(key)], marker="D", s=36, facecolor="white",
                               edgecolor=r.color, lw=1.4, zorder=4)
        if not xs_all:
            _no_data(ax, "rounds.csv")
            continue
        for key in targets:
            ax.axhline(float(key), color="#444", ls="--", lw=0.9, zorder=1)
            ax.annotate(f"target {key}", (0.0, float(key)), xycoords=("axes fraction", "data"),
                        xytext=(3, 2), textcoords="offset points", fontsize=8, color="#444")
        _log_if_wide(ax, xs_all)
        if ax.get_xscale() == "linear":
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.xaxis.set_major_formatter(_eng(unit))
        ax.set(xlabel=xlabel, ylabel="test accuracy")
    axes[0].set_title(TITLE)
    if len(runs) > 1:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper")
    return fig


def caption(runs: list[Any]) -> str:
    """The figure's caption."""
    targets = targets_of(runs)
    what = (f"Dashed lines: targets {', '.join(targets)}; a diamond marks where a run first reaches one."
            if targets else "No targets set (flexpl run/compare/sweep --target-accuracy A).")
    return "Each step is a round: accuracy after the round against everything spent up to its end. " + what


def targets_table(runs: list[Any]) -> str:
    """HTML table "cost to reach each target": one row per run, the round and costs per target.

    The cheapest run in every column is shaded; a target a run never reached reads "not reached".
    """
    from flexpl.report.style import fmt_value as _fmt

    targets = targets_of(runs)
    e = html.escape
    if not targets:
        return ('<p class="note">No accuracy targets in these runs; add --target-accuracy A (repeatable) '
                "or evaluation.targets to report the cost to reach each one.</p>")
    cols = [(k, f) for k in targets for f in FIELDS]
    best: dict[tuple[str, str], float] = {}
    for k, f in cols:
        vals = [h[f] for r in runs if (h := (r.summary.get("to_target") or {}).get(k)) and h.get(f) is not None]
        if vals:
            best[(k, f)] = min(vals)
    head1 = "<th></th>" + "".join(f'<th colspan="{len(FIELDS)}">accuracy ≥ {e(k)}</th>' for k in targets)
    head2 = "<th>run</th>" + "".join(f"<th>{e(f)}</th>" for _, f in cols)
    body = []
    for r in runs:
        cells = [f'<td><span class="swatch" style="background:{r.color}"></span>{e(r.label)}</td>']
        tt = r.summary.get("to_target") or {}
        for k in targets:
            hit = tt.get(k)
            if hit is None:
                cells.append(f'<td colspan="{len(FIELDS)}" style="text-align:center;color:#98a2b3">'
                             "not reached</td>")
                continue
            for f in FIELDS:
                v = hit.get(f)
                cls = ' class="best"' if len(runs) > 1 and v is not None and v == best.get((k, f)) else ""
                cells.append(f'<td{cls} title="{e(str(v))}">{e(_fmt("energy_j" if f == "device_energy_j" else f, v))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head1}</tr><tr>{head2}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>'
            '<p class="note">For each target, the first round whose test accuracy reaches it and the '
            f"cumulative {', '.join(COSTS)} at the end of that round (device_energy_j: energy on the "
            "data-holding devices). Cheapest per column shaded green.</p>")
