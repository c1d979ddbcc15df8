"""The report's figures: matplotlib on the Agg canvas, each returned as a Figure, all drawn by :func:`make_figures`.

See :mod:`flexpl.report.html` for the list of figures and the page they go in.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from flexpl.costs.targets import as_float
from flexpl.report import targets as report_targets
from flexpl.report.runs import Run, SeedGroup, pareto_front, seed_groups_of
from flexpl.report.style import eng as _eng
from flexpl.report.style import figure as _figure
from flexpl.report.style import log_if_wide as _log_if_wide
from flexpl.report.style import no_data as _no_data
from flexpl.studies.seeds import mean_std

# (name, title) of every figure, in page order; the name is the PNG's stem and the <img> alt.
FIGURES: list[tuple[str, str]] = [
    ("accuracy_vs_round", "Test accuracy per round"),
    ("accuracy_vs_energy", "Accuracy vs cumulative energy"),
    ("accuracy_vs_bytes", "Accuracy vs cumulative bytes on the network"),
    ("pareto_energy", "Pareto front: final accuracy vs total energy"),
    ("pareto_bytes", "Pareto front: final accuracy vs total bytes"),
    ("energy_per_node", "Energy per node"),
    ("bytes_per_link", "Bytes per link"),
    ("timeline", "One round on the virtual clock"),
    ("accuracy_to_target", "Accuracy against cumulative bytes, energy and simulated time"),
]

# Colours of the timeline's actions: compute in blues/purples, traffic in warm colours.
WHAT_COLORS: dict[str, str] = {
    "fwd": "#2F5F9E", "bwd": "#7EAEDB", "aggregate": "#2A9D5C", "join": "#17A2B8",
    "input": "#8C6D4F", "data": "#5E5E5E", "activation": "#E8893A", "gradient": "#C8423F",
    "labels": "#D98BC6", "weights": "#C9B458",
}
MAX_TIMELINES = 12  # beyond this the Gantt chart gets too tall to read; the rest are listed
GREY = "#b5b5b5"


_RC = {
    "font.size": 9.5, "axes.titlesize": 11, "axes.titleweight": "bold", "axes.titlelocation": "left",
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.6, "legend.frameon": False, "legend.fontsize": 8.5, "axes.labelcolor": "#333",
    "xtick.color": "#444", "ytick.color": "#444", "axes.edgecolor": "#888",
}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def _legend_right(ax: Any, n: int) -> None:
    if n > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def fig_accuracy_vs_round(runs: list[Run]) -> Any:
    """Test accuracy after every round, one line per run."""
    fig = _figure(10.5, 3.4)
    ax = fig.add_subplot()
    drawn = False
    for r in runs:
        pts = [(row.get("round", math.nan), row.get("accuracy", math.nan)) for row in r.rounds]
        pts = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
        if pts:
            drawn = True
            ax.plot(*zip(*pts), marker="o", ms=3.5, lw=1.6, color=r.color, label=r.label)
    if not drawn:
        _no_data(ax, "rounds.csv")
        return fig
    ax.set(xlabel="round", ylabel="test accuracy", title=FIGURES[0][1])
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_right(ax, len(runs))
    return fig


def fig_accuracy_vs_cost(runs: list[Run], col: str, unit: str, xlabel: str, title: str) -> Any:
    """Accuracy against a cumulative cost column of rounds.csv, one line per run."""
    fig = _figure(5.6, 3.9)
    ax = fig.add_subplot()
    xs_all = []
    for r in runs:
        pts = [(row.get(col, math.nan), row.get("accuracy", math.nan)) for row in r.rounds]
        pts = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
        if pts:
            xs_all += [x for x, _ in pts]
            ax.plot(*zip(*pts), marker="o", ms=3.5, lw=1.6, color=r.color, label=r.label)
    if not xs_all:
        _no_data(ax, "rounds.csv")
        return fig
    _log_if_wide(ax, xs_all)
    ax.xaxis.set_major_formatter(_eng(unit))
    ax.set(xlabel=xlabel, ylabel="test accuracy", title=title)
    if len(runs) > 1:
        ax.legend(loc="lower right")
    return fig


def fig_pareto(runs: list[Run], key: str, unit: str, xlabel: str, title: str) -> tuple[Any, list[int]]:
    """Final accuracy vs a total cost; the non-dominated runs in colour, joined by their frontier."""
    fig = _figure(5.6, 3.9)
    ax = fig.add_subplot()
    pts = [(as_float(r.summary.get(key)), as_float(r.summary.get("final_accuracy"))) for r in runs]
    front = pareto_front(pts)
    if not any(math.isfinite(c) and math.isfinite(a) for c, a in pts):
        _no_data(ax, key)
        return fig, front
    on = set(front)
    finite = [c for c, a in pts if math.isfinite(c) and math.isfinite(a)]
    lo, hi = min(finite), max(finite)

    def left(c: float) -> bool:  # label on the left of points near the right edge, so it stays inside
        return hi > lo and (c - lo) / (hi - lo) > 0.6

    fx = sorted((pts[i] for i in front), key=lambda p: (p[0], -p[1]))
    if len(fx) > 1:  # the attainment line: best accuracy reachable for a given budget
        ax.plot([p[0] for p in fx], [p[1] for p in fx], drawstyle="steps-post", color="#333", lw=1,
                ls="--", zorder=1, label="Pareto front")
    for i, (r, (c, a)) in enumerate(zip(runs, pts)):
        if not (math.isfinite(c) and math.isfinite(a)):
            continue
        dx, ha = (-6, "right") if left(c) else (6, "left")
        if i in on:
            ax.scatter([c], [a], s=70, color=r.color, edgecolor="#222", lw=0.8, zorder=3)
            ax.annotate(r.label, (c, a), xytext=(dx, 5), textcoords="offset points", fontsize=8.5,
                        color="#111", fontweight="bold", ha=ha)
        else:
            ax.scatter([c], [a], s=45, color=GREY, edgecolor="#888", lw=0.6, zorder=2)
            ax.annotate(r.label, (c, a), xytext=(dx, -11), textcoords="offset points", fontsize=8,
                        color="#999", ha=ha)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color="#666", mec="#222", label="non-dominated"),
               Line2D([], [], marker="o", ls="", color=GREY, mec="#888", label="dominated")]
    ax.legend(handles=handles, loc="best")
    _log_if_wide(ax, [c for c, _ in pts])
    ax.xaxis.set_major_formatter(_eng(unit))
    ax.margins(x=0.18, y=0.12)
    ax.set(xlabel=xlabel, ylabel="final test accuracy", title=title)
    return fig, front


def _names(runs: list[Run], key: str) -> list[str]:
    out: list[str] = []
    for r in runs:
        out.extend(k for k in r.summary.get(key) or {} if k not in out)
    return out


def _grouped_bars(ax: Any, groups: list[str], runs: list[Run], stacks: list[tuple[str, Any, dict]]) -> None:
    """Bars grouped by ``groups`` (x), one per run (colour), each a stack of ``stacks`` parts.

    ``stacks`` holds (part name, value function(run, group) -> float, bar style).
    """
    n = len(runs)
    width = 0.82 / n
    for j, r in enumerate(runs):
        xs = [i + (j - (n - 1) / 2) * width for i in range(len(groups))]
        bottom = [0.0] * len(groups)
        for _, value, style in stacks:
            h = [value(r, g) for g in groups]
            ax.bar(xs, h, width * 0.92, bottom=bottom, color=r.color, edgecolor="white", lw=0.4, **style)
            bottom = [b + v for b, v in zip(bottom, h)]
    ax.set_xticks(range(len(groups)), groups)


def _run_legend(ax: Any, runs: list[Run], parts: list[tuple[str, dict]]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=r.color, label=r.label) for r in runs]
    if len(parts) > 1:
        handles += [Patch(facecolor="#999", edgecolor="white", label=name, **style) for name, style in parts]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _per(r: Run, section: str, name: str, key: str) -> float:
    """``summary[section][name][key]`` of run ``r`` (e.g. a node's energy), 0.0 where missing."""
    return as_float((r.summary.get(section) or {}).get(name, {}).get(key, 0.0)) or 0.0


def _bar_figure(runs: list[Run], groups: list[str], height: float, missing: str,
                stacks: list[tuple[str, Any, dict]], parts: list[tuple[str, dict]], unit: str, ylabel: str,
                title: str) -> Any:
    """One bar group per node or link (see :func:`_grouped_bars`), or a "no data" note naming ``missing``."""
    fig = _figure(10.5, height)
    ax = fig.add_subplot()
    if not groups:
        _no_data(ax, missing)
        return fig
    _grouped_bars(ax, groups, runs, stacks)
    ax.yaxis.set_major_formatter(_eng(unit))
    ax.grid(axis="x", visible=False)
    ax.set(ylabel=ylabel, title=title)
    _run_legend(ax, runs, parts)
    return fig


def fig_energy_per_node(runs: list[Run]) -> Any:
    """Energy of every node, stacked as compute, communication and (when counted) idle."""
    nodes = _names(runs, "per_node")

    def part(key: str):
        return lambda r, g: _per(r, "per_node", g, key)

    def idle(r: Run, g: str) -> float:
        # Idle energy counts only when the scenario adds it to the total (energy.include_idle).
        d = (r.summary.get("per_node") or {}).get(g, {})
        rest = as_float(d.get("energy_j", 0)) - as_float(d.get("energy_j_compute", 0)) - as_float(d.get("energy_j_comm", 0))
        return rest if rest > 1e-12 * max(as_float(d.get("energy_j", 0)), 1e-300) else 0.0

    parts = [("compute", {}), ("communication", {"hatch": "////", "alpha": 0.55})]
    stacks = [("compute", part("energy_j_compute"), parts[0][1]),
              ("communication", part("energy_j_comm"), parts[1][1])]
    if any(idle(r, g) > 0 for r in runs for g in nodes):
        parts.append(("idle", {"hatch": "..", "alpha": 0.3}))
        stacks.append(("idle", idle, parts[2][1]))
    return _bar_figure(runs, nodes, 4.2, "per-node energy", stacks, parts, "J", "energy over the whole run",
                       "Energy per node: compute (solid) + communication (hatched)")


def fig_bytes_per_link(runs: list[Run]) -> Any:
    """Bytes carried by every link over the whole run (both directions)."""
    links = _names(runs, "per_link")

    def value(r: Run, g: str) -> float:
        return _per(r, "per_link", g, "bytes")

    return _bar_figure(runs, links, 3.9, "links", [("bytes", value, {})], [], "B", "bytes over the whole run",
                       FIGURES[6][1])


def _time_unit(span: float) -> tuple[float, str]:
    if span < 1e-3:
        return 1e6, "µs"
    if span < 1.0:
        return 1e3, "ms"
    return 1.0, "s"


def _pct(share: float) -> str:
    return "<1%" if 0 < share < 0.005 else f"{100 * share:.0f}%"


def _round_start(r: Run) -> float:
    """Virtual time at which the timeline's round began: the previous round's end, if known."""
    starts = [a["start_s"] for a in r.timeline]
    rnd = r.timeline[0]["round"]
    prev = [row.get("sim_time_s", math.nan) for row in r.rounds if row.get("round") == rnd - 1]
    if rnd == 1:
        return 0.0
    if prev and math.isfinite(prev[0]) and prev[0] <= min(starts) + 1e-12:
        return prev[0]
    return min(starts)


def fig_timeline(runs: list[Run]) -> Any:
    """Gantt chart of the last round: one row per node and link, bars coloured by action."""
    shown = [r for r in runs if r.timeline][:MAX_TIMELINES]
    if not shown:
        fig = _figure(10.5, 2.0)
        _no_data(fig.add_subplot(), "timeline.csv")
        return fig
    rows_of = {}
    for r in shown:
        nodes = list((r.summary.get("per_node") or {}).keys())
        links = list((r.summary.get("per_link") or {}).keys())
        for a in r.timeline:  # resources the summary does not list still get a row
            lst = nodes if a["resource_kind"] == "node" else links
            if a["resource"] not in lst:
                lst.append(a["resource"])
        # a full-duplex link shows as its two directions ("<link> <from>><to>"), not as the bare link
        used = {a["resource"] for a in r.timeline}
        links = [ln for ln in links if ln in used or not any(u.startswith(ln + " ") for u in used)]
        rows_of[r.name] = (nodes, links)
    heights = [0.9 + 0.24 * sum(map(len, rows_of[r.name])) for r in shown]
    fig = _figure(10.5, sum(heights) + 0.5)
    axes = fig.subplots(len(shown), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    seen_what: list[str] = []
    for ax, r in zip(axes, shown):
        nodes, links = rows_of[r.name]
        order = nodes + links
        t0 = _round_start(r)
        t1 = max(a["end_s"] for a in r.timeline)
        span = max(t1 - t0, 1e-15)
        scale, unit = _time_unit(span)
        # Sub-pixel actions (a 1 µs forward pass in a 100 ms round) are widened so they show.
        min_w = span * 0.0025
        by: dict[tuple[int, str], list[tuple[float, float]]] = {}
        busy = dict.fromkeys(order, 0.0)
        for a in r.timeline:
            y = order.index(a["resource"])
            w = a["end_s"] - a["start_s"]
            busy[a["resource"]] += w
            by.setdefault((y, a["what"]), []).append(((a["start_s"] - t0) * scale, max(w, min_w) * scale))
            if a["what"] not in seen_what:
                seen_what.append(a["what"])
        for (y, what), bars in by.items():
            ax.broken_barh(bars, (y - 0.36, 0.72), facecolors=WHAT_COLORS.get(what, "#999"), lw=0)
        ax.set_ylim(len(order) - 0.5, -0.5)
        ax.set_yticks(range(len(order)), order)
        for tick, name in zip(ax.get_yticklabels(), order):
            if name in links:
                tick.set_color("#777")
                tick.set_fontstyle("italic")
        if nodes and links:
            ax.axhline(len(nodes) - 0.5, color="#ccc", lw=0.8)
        ax.set_xlim(0, span * scale * 1.005)
        ax.grid(axis="y", visible=False)
        # Busy share per row: low numbers are where the plan waits.
        right = ax.secondary_yaxis("right")
        right.set_yticks(range(len(order)), [_pct(busy[n] / span) for n in order])
        right.tick_params(length=0, labelsize=7.5, labelcolor="#777")
        right.spines["right"].set_visible(False)
        rnd = int(r.timeline[0]["round"])
        ax.set_title(f"{r.label}  ·  round {rnd}  ·  {span * scale:.4g} {unit} on the virtual clock",
                     fontsize=10)
        ax.set_xlabel(f"time since the round started ({unit})", fontsize=8.5, color="#555")
    from matplotlib.patches import Patch

    handles = [Patch(color=WHAT_COLORS.get(w, "#999"), label=w) for w in WHAT_COLORS if w in seen_what]
    handles += [Patch(color="#999", label=w) for w in seen_what if w not in WHAT_COLORS]
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 10))
    return fig


# ---------------------------------------------------------------- several seeds (flexpl.studies.seeds)


def _ms(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if math.isfinite(v)]
    m, sd = mean_std(vals)
    return (math.nan, math.nan) if m is None else (m, sd or 0.0)


def fig_seeds_accuracy(groups: list[SeedGroup]) -> Any:
    """Mean test accuracy per round over seeds, error bars = sample std across seeds."""
    fig = _figure(10.5, 3.4)
    ax = fig.add_subplot()
    for g in groups:
        by_round: dict[float, list[float]] = {}
        for r in g.runs:
            for row in r.rounds:
                x, y = row.get("round", math.nan), row.get("accuracy", math.nan)
                if math.isfinite(x):
                    by_round.setdefault(x, []).append(y)
        xs = sorted(by_round)
        ms = [_ms(by_round[x]) for x in xs]
        ax.errorbar(xs, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", ms=3.5, lw=1.6, capsize=3,
                    color=g.color, label=f"{g.name} (n={len(g.runs)})")
    ax.set(xlabel="round", ylabel="test accuracy", title="Test accuracy per round, mean ± std over seeds")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_right(ax, len(groups))
    return fig


def fig_seeds_costs(groups: list[SeedGroup]) -> Any:
    """Final accuracy vs total bytes and vs total energy, mean ± std over seeds on both axes."""
    fig = _figure(10.5, 3.9)
    for j, (key, unit, xlabel) in enumerate([("bytes_total", "B", "total bytes"),
                                             ("energy_j_total", "J", "total energy")]):
        ax = fig.add_subplot(1, 2, j + 1)
        xs_all = []
        for g in groups:
            cx, sx = _ms([as_float(r.summary.get(key)) for r in g.runs])
            ay, sy = _ms([as_float(r.summary.get("final_accuracy")) for r in g.runs])
            if not (math.isfinite(cx) and math.isfinite(ay)):
                continue
            xs_all.append(cx)
            ax.errorbar([cx], [ay], xerr=[sx], yerr=[sy], fmt="o", ms=6, capsize=3, color=g.color,
                        label=g.name)
            ax.annotate(g.name, (cx, ay), xytext=(6, 5), textcoords="offset points", fontsize=8.5)
        _log_if_wide(ax, xs_all)
        ax.xaxis.set_major_formatter(_eng(unit))
        ax.margins(x=0.18, y=0.12)
        ax.set(xlabel=xlabel, ylabel="final test accuracy",
               title=f"Accuracy vs {xlabel}, mean ± std over seeds")
    return fig


def make_figures(runs: list[Run]) -> tuple[dict[str, bytes], dict[str, list[int]]]:
    """Draw every figure; returns name -> PNG bytes and the Pareto fronts ("energy", "bytes")."""
    from matplotlib import rc_context

    figs: dict[str, Any] = {}
    fronts: dict[str, list[int]] = {}
    with rc_context(_RC):
        figs["accuracy_vs_round"] = fig_accuracy_vs_round(runs)
        figs["accuracy_vs_energy"] = fig_accuracy_vs_cost(runs, "energy_j", "J", "cumulative energy",
                                                          FIGURES[1][1])
        figs["accuracy_vs_bytes"] = fig_accuracy_vs_cost(runs, "bytes", "B", "cumulative bytes sent",
                                                         "Accuracy vs cumulative bytes")
        figs["pareto_energy"], fronts["energy"] = fig_pareto(runs, "energy_j_total", "J", "total energy",
                                                             "Pareto: accuracy vs energy")
        figs["pareto_bytes"], fronts["bytes"] = fig_pareto(runs, "bytes_total", "B", "total bytes",
                                                           "Pareto: accuracy vs bytes")
        figs["energy_per_node"] = fig_energy_per_node(runs)
        figs["bytes_per_link"] = fig_bytes_per_link(runs)
        figs["timeline"] = fig_timeline(runs)
        groups = seed_groups_of(runs)
        if groups:  # several seeds: error bars over seeds
            figs["seeds_accuracy"] = fig_seeds_accuracy(groups)
            figs["seeds_costs"] = fig_seeds_costs(groups)
        figs["accuracy_to_target"] = report_targets.fig_accuracy_to_target(runs)
        pngs = {name: _png(fig) for name, fig in figs.items()}
    return pngs, fronts
