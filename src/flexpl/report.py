"""``flexpl report DIR``: one self-contained ``report.html`` from a run, compare or sweep folder.

The report only reads what runs wrote (summary.json, rounds.csv, timeline.csv,
config.yaml); it never reruns anything. Figures are drawn with matplotlib's Agg canvas,
saved beside the report as ``fig_<name>.png`` and embedded in the HTML as base64 data
URIs, so the page needs no network, no JavaScript and no external CSS:

1. accuracy vs round; 2. accuracy vs cumulative energy; 3. vs cumulative bytes;
4. Pareto front of final accuracy vs total energy; 5. vs total bytes;
6. energy per node (compute, communication, idle); 7. bytes per link;
8. the last round on the virtual clock (one row per node and link, bars coloured by action);
9. accuracy as step curves against cumulative bytes, energy and simulated time, with the
   accuracy targets drawn, beside the table "cost to reach each target" (flexpl.report_targets).

Runs are found as DIR itself when it holds summary.json, else every folder at most two
levels below DIR that holds one (a compare folder's strategies, a sweep's cells).
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexpl import report_targets
from flexpl.errors import UserError
from flexpl.report_style import DPI  # noqa: F401 (kept under its old name)
from flexpl.report_style import eng as _eng
from flexpl.report_style import figure as _figure
from flexpl.report_style import fmt_value as _fmt
from flexpl.report_style import log_if_wide as _log_if_wide
from flexpl.report_style import no_data as _no_data

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
# Summary columns where the best value is highlighted in the table: +1 maximise, -1 minimise.
BEST: dict[str, int] = {
    "final_accuracy": 1, "accuracy_min": 1, "accuracy_ensemble": 1, "final_loss": -1,
    "flops_total": -1, "bytes_total": -1, "sim_time_s": -1, "energy_j_total": -1,
    "energy_j_compute": -1, "energy_j_comm": -1, "params_total": -1,
}
MAX_TIMELINES = 12  # beyond this the Gantt chart gets too tall to read; the rest are listed
GREY = "#b5b5b5"


@dataclass
class Run:
    """What one finished run wrote, as read back from its folder."""

    name: str  # path relative to the report folder ("." for a single run)
    path: Path
    summary: dict[str, Any]
    rounds: list[dict[str, float]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    config: str = ""
    label: str = ""  # short legend label
    color: str = "C0"


# ---------------------------------------------------------------- pure helpers


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices (ascending) of the non-dominated points among ``(cost, accuracy)`` pairs.

    Cost is minimised and accuracy maximised: point j dominates i when it costs no more,
    is no less accurate, and is strictly better in one of the two. Equal points do not
    dominate each other, so ties are all kept. Points with a NaN never make the front
    and dominate nothing. O(n²), which is plenty for the handful of runs in a report.
    """
    ok = [not (math.isnan(c) or math.isnan(a)) for c, a in points]
    front = []
    for i, (ci, ai) in enumerate(points):
        if not ok[i]:
            continue
        dominated = any(ok[j] and cj <= ci and aj >= ai and (cj < ci or aj > ai)
                        for j, (cj, aj) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def discover_runs(root: Path) -> list[Path]:
    """Run folders under ``root``: root itself if it holds summary.json, else subfolders (depth <= 2)."""
    if (root / "summary.json").is_file():
        return [root]

    def subdirs(p: Path) -> list[Path]:
        return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))

    found = []
    for d in subdirs(root):
        if (d / "summary.json").is_file():
            found.append(d)
        else:
            found.extend(e for e in subdirs(d) if (e / "summary.json").is_file())
    # Keep the order the user asked for: compare's strategy list, the sweep's grid order.
    order = [r.get("strategy", "") for r in _read_csv(root / "comparison.csv")]
    order += [r.get("cell", "") for r in _read_csv(root / "sweep.csv")]
    rank = {name: i for i, name in reversed(list(enumerate(order)))}

    def rank_of(name: str) -> int:  # a seed's run (<strategy>/seed<k>) ranks as its strategy (cell)
        return rank.get(name, rank.get(name.rsplit("/seed", 1)[0], len(rank)))

    return sorted(found, key=lambda p: (rank_of(p.relative_to(root).as_posix()), p.relative_to(root).as_posix()))


def _short_labels(names: list[str]) -> list[str]:
    """Legend labels: drop the ``key=value`` parts every name shares and shorten dotted keys."""
    parts = [n.split("__") for n in names]
    common = set.intersection(*(set(p) for p in parts)) if len(parts) > 1 else set()
    kept = [[x for x in p if x not in common] or p for p in parts]

    def short(x: str) -> str:
        k, sep, v = x.partition("=")
        return f"{k.rsplit('.', 1)[-1]}={v}" if sep else x

    labels = [", ".join(short(x) for x in p) for p in kept]
    if len(set(labels)) < len(labels):  # shortening made two cells look alike
        labels = [", ".join(p) for p in kept]
    return labels


def load_runs(root: Path) -> list[Run]:
    """Read every run under ``root`` (see :func:`discover_runs`) and give each a label and colour.

    A summary.json that is not the result of the config.yaml beside it (an earlier run's,
    see ``flexpl.results.stale_reason``) is left out, with one warning line on stderr.
    """
    import sys

    from flexpl.results import stale_reason

    runs = []
    for p in discover_runs(root):
        try:
            summary = json.loads((p / "summary.json").read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"report: cannot read {p / 'summary.json'}: {exc}; rerun that run") from None
        why = stale_reason(p, summary)
        if why:
            print(f"flexpl: warning: report leaves out {p}: {why}", file=sys.stderr)
            continue
        if not (p / "rounds.csv").is_file():  # a finished run always writes it: say so, do not draw nothing
            raise UserError(f"report: {p / 'rounds.csv'} is missing beside {p / 'summary.json'}; "
                            "rerun that run or remove its folder")
        rounds = [{k: _float(v) for k, v in r.items()} for r in _read_csv(p / "rounds.csv")]
        timeline = [{**r, **{k: _float(r[k]) for k in ("round", "start_s", "end_s", "flops", "bytes")}}
                    for r in _read_csv(p / "timeline.csv")]
        try:
            config = (p / "config.yaml").read_text()
        except OSError:
            config = ""
        name = p.relative_to(root).as_posix()
        runs.append(Run(name, p, summary, rounds, timeline, config))
    names = [r.name if r.name != "." else str(r.summary.get("strategy", r.path.name)) for r in runs]
    palette = "tab10" if len(runs) <= 10 else "tab20"
    for r, label, i in zip(runs, _short_labels(names), range(len(runs))):
        r.label = label
        r.color = _cmap_color(palette, i)
    return runs


def _cmap_color(name: str, i: int) -> str:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps[name]
    return to_hex(cmap(i % cmap.N))


# ---------------------------------------------------------------- figures

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
    pts = [(_float(r.summary.get(key)), _float(r.summary.get("final_accuracy"))) for r in runs]
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


def fig_energy_per_node(runs: list[Run]) -> Any:
    """Energy of every node, stacked as compute, communication and (when counted) idle."""
    nodes = _names(runs, "per_node")
    fig = _figure(10.5, 4.2)
    ax = fig.add_subplot()
    if not nodes:
        _no_data(ax, "per-node energy")
        return fig

    def part(key: str):
        return lambda r, g: _float((r.summary.get("per_node") or {}).get(g, {}).get(key, 0.0)) or 0.0

    def idle(r: Run, g: str) -> float:
        # Idle energy counts only when the scenario adds it to the total (energy.include_idle).
        d = (r.summary.get("per_node") or {}).get(g, {})
        rest = _float(d.get("energy_j", 0)) - _float(d.get("energy_j_compute", 0)) - _float(d.get("energy_j_comm", 0))
        return rest if rest > 1e-12 * max(_float(d.get("energy_j", 0)), 1e-300) else 0.0

    parts = [("compute", {}), ("communication", {"hatch": "////", "alpha": 0.55})]
    stacks = [("compute", part("energy_j_compute"), parts[0][1]),
              ("communication", part("energy_j_comm"), parts[1][1])]
    if any(idle(r, g) > 0 for r in runs for g in nodes):
        parts.append(("idle", {"hatch": "..", "alpha": 0.3}))
        stacks.append(("idle", idle, parts[2][1]))
    _grouped_bars(ax, nodes, runs, stacks)
    ax.yaxis.set_major_formatter(_eng("J"))
    ax.grid(axis="x", visible=False)
    ax.set(ylabel="energy over the whole run", title="Energy per node: compute (solid) + communication (hatched)")
    _run_legend(ax, runs, parts)
    return fig


def fig_bytes_per_link(runs: list[Run]) -> Any:
    """Bytes carried by every link over the whole run (both directions)."""
    links = _names(runs, "per_link")
    fig = _figure(10.5, 3.9)
    ax = fig.add_subplot()
    if not links:
        _no_data(ax, "links")
        return fig

    def value(r: Run, g: str) -> float:
        return _float((r.summary.get("per_link") or {}).get(g, {}).get("bytes", 0.0)) or 0.0

    _grouped_bars(ax, links, runs, [("bytes", value, {})])
    ax.yaxis.set_major_formatter(_eng("B"))
    ax.grid(axis="x", visible=False)
    ax.set(ylabel="bytes over the whole run", title=FIGURES[6][1])
    _run_legend(ax, runs, [])
    return fig


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


# ---------------------------------------------------------------- several seeds (flexpl.seeds)


@dataclass
class SeedGroup:
    """The runs of one strategy (sweep cell) over several seeds: ``<name>/seed<k>`` folders."""

    name: str
    runs: list[Run]
    color: str = "C0"


def seed_groups_of(runs: list[Run]) -> list[SeedGroup]:
    """Runs grouped by strategy (cell) over seeds; empty unless some group has two seeds or more."""
    from flexpl.seeds import seed_groups

    groups = seed_groups([r.name for r in runs])
    if not any(len(v) > 1 for v in groups.values()):
        return []
    out = []
    for name, members in groups.items():
        rs = [runs[i] for _, i in sorted(members)]
        out.append(SeedGroup(name, rs, rs[0].color))
    return out


def _ms(values: Sequence[float]) -> tuple[float, float]:
    from flexpl.seeds import mean_std

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
            cx, sx = _ms([_float(r.summary.get(key)) for r in g.runs])
            ay, sy = _ms([_float(r.summary.get("final_accuracy")) for r in g.runs])
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


def _seeds_html_table(groups: list[SeedGroup]) -> str:
    """Mean ± std over seeds of the headline columns; "≈" where a gap is within the spread."""
    from flexpl.seeds import aggregate_seeds, within_spread

    aggs = [aggregate_seeds([_flat(r.summary) for r in g.runs]) for g in groups]
    marks = within_spread(aggs)
    cols = ["final_accuracy", "accuracy_min", "bytes_total", "energy_j_total", "sim_time_s", "params_total"]
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in ["run", "seeds", *cols])
    body = []
    for g, a, mark in zip(groups, aggs, marks):
        cells = [f'<td><span class="swatch" style="background:{g.color}"></span>{e(g.name)}</td>',
                 f"<td>{a.get('seeds', 0)}</td>"]
        for c in cols:
            m, sd = a.get(f"{c}_mean"), a.get(f"{c}_std")
            txt = "–" if m is None else f"{_fmt(c, m)} ± {_fmt(c, sd or 0.0) if 'accuracy' not in c else f'{sd:.4f}'}"
            if c == "final_accuracy" and mark:
                txt = "≈ " + txt
            cells.append(f"<td>{e(txt)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = ('<p class="note">Mean ± sample standard deviation (ddof = 1) over seeds. ≈: final accuracy '
            "within the larger std of the best run's, a difference these seeds cannot separate.</p>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            f"</table></div>{note}")


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


# ---------------------------------------------------------------- HTML

_CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --accent:#3056d3; --best:#e6f4ea; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--fg); background:#f6f7f9; }
main { max-width:1200px; margin:0 auto; padding:28px 28px 60px; }
header h1 { margin:0 0 4px; font-size:26px; letter-spacing:-0.01em; }
header .sub { color:var(--muted); margin:0; }
nav { margin:14px 0 6px; display:flex; flex-wrap:wrap; gap:6px; }
nav a { color:var(--accent); text-decoration:none; padding:3px 10px; border:1px solid var(--line);
        border-radius:999px; background:#fff; font-size:13px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:16px 20px;
          margin:18px 0; }
section h2 { margin:0 0 10px; font-size:18px; }
p.note { color:var(--muted); margin:6px 0 0; font-size:13px; }
figure { margin:8px 0; }
figure img { max-width:100%; height:auto; display:block; }
figcaption { color:var(--muted); font-size:12.5px; margin-top:4px; }
.pair { display:grid; grid-template-columns:1fr 1fr; gap:14px; }
@media (max-width: 900px) { .pair { grid-template-columns:1fr; } }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; font-size:12.5px; font-variant-numeric:tabular-nums; }
th, td { padding:5px 9px; border-bottom:1px solid var(--line); text-align:right; white-space:nowrap; }
th { background:#f2f4f7; position:sticky; top:0; font-weight:600; }
th:first-child, td:first-child { text-align:left; }
tbody tr:nth-child(even) td { background:#fafbfc; }
td.best { background:var(--best) !important; font-weight:600; }
.swatch { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:6px; }
dl.common { display:flex; flex-wrap:wrap; gap:4px 18px; margin:12px 0 0; font-size:12.5px; }
dl.common div { display:flex; gap:6px; } dl.common dt { color:var(--muted); } dl.common dd { margin:0; }
details { border:1px solid var(--line); border-radius:8px; margin:8px 0; padding:6px 12px; }
details summary { cursor:pointer; font-weight:600; }
pre { background:#f6f8fa; border-radius:6px; padding:10px 12px; overflow-x:auto; font-size:12px;
      line-height:1.4; max-height:480px; }
footer { color:var(--muted); font-size:12px; text-align:center; margin-top:24px; }
"""


def _flat(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if not isinstance(v, dict | list)}


def _table(runs: list[Run], fronts: dict[str, list[int]]) -> str:
    flats = [_flat(r.summary) for r in runs]
    keys: list[str] = []
    for f in flats:
        keys.extend(k for k in f if k not in keys)
    if len(runs) > 1:  # columns where every run agrees are listed once below the table
        varying = [k for k in keys if len({json.dumps(f.get(k)) for f in flats}) > 1]
        common = [k for k in keys if k not in varying]
    else:
        varying, common = keys, []
    e = html.escape
    head = "".join(f"<th>{e(k)}</th>" for k in ["run", *varying, "Pareto front"])
    best: dict[str, float] = {}
    for k in varying:
        vals = [_float(f.get(k)) for f in flats]
        vals = [v for v in vals if math.isfinite(v)]
        if k in BEST and vals:
            best[k] = max(vals) if BEST[k] > 0 else min(vals)
    body = []
    for i, (r, f) in enumerate(zip(runs, flats)):
        cells = [f'<td><span class="swatch" style="background:{r.color}"></span>{e(r.label)}</td>']
        for k in varying:
            v = f.get(k)
            cls = ' class="best"' if k in best and _float(v) == best[k] and len(runs) > 1 else ""
            cells.append(f'<td{cls} title="{e(str(v))}">{e(_fmt(k, v))}</td>')
        on = [name for name, front in fronts.items() if i in front]
        cells.append(f"<td>{e(', '.join(on)) or '–'}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    out = (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
           f'<tbody>{"".join(body)}</tbody></table></div>')
    if common:
        items = "".join(f'<div><dt>{e(k)}</dt><dd title="{e(str(flats[0].get(k)))}">'
                        f"{e(_fmt(k, flats[0].get(k)))}</dd></div>" for k in common)
        out += f'<p class="note">Same for every run:</p><dl class="common">{items}</dl>'
    return out


def _img(name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="fig-{name}"><img id="{name}" alt="{name}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _configs(runs: list[Run]) -> str:
    import yaml

    out = []
    for i, r in enumerate(runs):
        plan = r.summary.get("plan")
        plan_txt = yaml.safe_dump(plan, sort_keys=False, default_flow_style=None) if plan else ""
        body = f"<pre>{html.escape(r.config or '(no config.yaml)')}</pre>"
        if plan_txt:
            body += f"<p class=\"note\">plan as compiled</p><pre>{html.escape(plan_txt)}</pre>"
        out.append(f"<details{' open' if i == 0 else ''}><summary>{html.escape(r.label)} "
                   f"<span style=\"color:#667085;font-weight:400\">({html.escape(r.name)}/config.yaml)"
                   f"</span></summary>{body}</details>")
    return "".join(out)


def _kind(root: Path) -> str:
    if (root / "summary.json").is_file():
        return "single run"
    if (root / "sweep.csv").is_file():
        return "sweep"
    if (root / "comparison.csv").is_file():
        return "comparison"
    return "runs"


def render_html(root: Path, runs: list[Run], pngs: dict[str, bytes], fronts: dict[str, list[int]]) -> str:
    """The whole report page as one string (figures inline as data URIs)."""
    import yaml

    e = html.escape
    scenarios = sorted({str(r.summary.get("scenario", "?")) for r in runs})
    versions = sorted({str(r.summary.get("flexpl_version", "?")) for r in runs})
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    sub = (f"{e(_kind(root))} of {len(runs)} run{'s' if len(runs) != 1 else ''} · scenario "
           f"{e(', '.join(scenarios))} · {e(str(root.resolve()))} · flexpl {e(', '.join(versions))} · {now}")
    grid = ""
    try:
        sweep = yaml.safe_load((root / "sweep.yaml").read_text()) or {}
        if isinstance(sweep.get("grid"), dict):
            grid = "Grid: " + "; ".join(f"{k} = {', '.join(map(str, v))}" for k, v in sweep["grid"].items())
    except (OSError, yaml.YAMLError):
        pass

    def names(front: list[int]) -> str:
        return ", ".join(runs[i].label for i in front) or "none"

    cap = {
        "accuracy_vs_round": "Headline test accuracy (sample-weighted over node paths) after each round.",
        "accuracy_vs_energy": "Each point is a round; x is the energy spent so far (compute + communication).",
        "accuracy_vs_bytes": "Each point is a round; x is every byte that has crossed a node boundary so far.",
        "pareto_energy": f"Up and to the left is better. Non-dominated: {names(fronts['energy'])}; "
                         "grey runs are beaten on both axes by some other run.",
        "pareto_bytes": f"Up and to the left is better. Non-dominated: {names(fronts['bytes'])}.",
        "energy_per_node": "Per node over the whole run; solid = compute, hatched = sending and receiving"
                           " (and dotted = idle, when the scenario counts it).",
        "bytes_per_link": "Bytes carried by each link over the whole run, both directions together.",
        "timeline": "The last round of each run: one row per node (black) and link (grey, italic), bars"
                    " coloured by action; empty stretches are waiting. The % on the right is how busy"
                    " each row is during the round. Very short actions are drawn slightly wider so"
                    " they stay visible.",
        "accuracy_to_target": report_targets.caption(runs),
    }
    missing = [r.label for r in runs if not r.timeline]
    hidden = [r.label for r in runs if r.timeline][MAX_TIMELINES:]
    tl_note = ""
    if missing:
        tl_note += f"<p class=\"note\">No timeline.csv for: {e(', '.join(missing))}.</p>"
    if hidden:
        tl_note += f"<p class=\"note\">Not drawn (first {MAX_TIMELINES} only): {e(', '.join(hidden))}.</p>"

    def fig(name: str) -> str:
        return _img(name, pngs[name], cap[name])

    sections = [
        ("summary", "Comparison", _table(runs, fronts)
         + '<p class="note">Best value per column shaded green. Costs are totals over the run on the '
           "virtual clock.</p>"),
        ("accuracy", "Accuracy", fig("accuracy_vs_round")
         + f'<div class="pair">{fig("accuracy_vs_energy")}{fig("accuracy_vs_bytes")}</div>'),
        ("targets", "Cost to reach each target", report_targets.targets_table(runs)
         + fig("accuracy_to_target")),
        ("pareto", "Trade-offs", f'<div class="pair">{fig("pareto_energy")}{fig("pareto_bytes")}</div>'),
        ("energy", "Energy per node", fig("energy_per_node")),
        ("network", "Network", fig("bytes_per_link")),
        ("timeline", "Timeline", fig("timeline") + tl_note),
        ("scenario", "Resolved scenario", _configs(runs)),
    ]
    groups = seed_groups_of(runs)
    if groups and "seeds_accuracy" in pngs:
        cap["seeds_accuracy"] = "Mean over seeds after each round; error bars are one sample std across seeds."
        cap["seeds_costs"] = ("Each point is a strategy (cell): mean over seeds, error bars one sample std on "
                              "both axes (costs vary with the seed's partition).")
        sections.insert(1, ("seeds", "Over seeds", _seeds_html_table(groups) + fig("seeds_accuracy")
                            + fig("seeds_costs")))
    nav = "".join(f'<a href="#{sid}">{e(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{e(title)}</h2>{content}</section>'
                   for sid, title, content in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>FlexPL report: {e(root.resolve().name)}</title><style>{_CSS}</style></head>"
            f"<body><main><header><h1>FlexPL report</h1><p class=\"sub\">{sub}</p>"
            + (f'<p class="sub">{e(grid)}</p>' if grid else "")
            + f"<nav>{nav}</nav></header>{body}"
            "<footer>Generated by flexpl report; self-contained, no network needed.</footer>"
            "</main></body></html>\n")


def build_report(root: str | Path) -> Path:
    """Write ``root/report.html`` (and ``root/fig_*.png``) for the runs under ``root``; return its path."""
    from flexpl.results import atomic_write

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"report: '{root}' is not a folder; give a run, compare or sweep folder")
    runs = load_runs(root)
    if not runs:
        raise UserError(f"report: no finished run in '{root}' (no summary.json in it or in its "
                        "subfolders); run flexpl run/compare/sweep first")
    pngs, fronts = make_figures(runs)
    for name, png in pngs.items():
        atomic_write(root / f"fig_{name}.png", png)
    path = root / "report.html"
    atomic_write(path, render_html(root, runs, pngs, fronts))
    return path


def maybe_report(out: Path, quiet: bool) -> None:
    """Build ``out/report.html`` after a compare or sweep; if it cannot be drawn here, say so in one warning line."""
    import sys

    try:
        path = build_report(out)
    except ImportError as exc:  # e.g. matplotlib missing: the results stand, only the report is lost
        print(f"flexpl: warning: no report.html in {out}/: {exc} (pip install matplotlib, then run "
              f"flexpl report {out})", file=sys.stderr)
        return
    if not quiet:
        from flexpl.console import make_console

        make_console().print(f"report: {path}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``flexpl report DIR``."""
    parser.add_argument("dir", metavar="DIR", help="a run, compare or sweep folder")


def main(args: argparse.Namespace) -> int:
    """flexpl report: build DIR/report.html and print its path."""
    print(build_report(args.dir))
    return 0
