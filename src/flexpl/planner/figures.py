"""``pareto.png`` of ``flexpl plan``: each plan's objective against its bytes and its time per round, and,
with ``--target-accuracy``, one row of cost-to-target fronts per target (:func:`target_fronts`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexpl.planner.choose import OBJECTIVES, TARGET_OBJECTIVES


@dataclass(frozen=True)
class FrontPoint:
    """One plan on a cost-to-target panel: its point and interval on both axes (inf: beyond the last round)."""

    plan: str
    learning_class: str
    x: float
    x_lo: float
    x_hi: float
    y: float
    y_lo: float
    y_hi: float


@dataclass(frozen=True)
class TargetFront:
    """One cost-to-target panel: columns ``x`` and ``y``, every plan drawn, the Pareto front (lower is better
    on both, by ``x``), and the learning classes that do not reach the target (not drawn)."""

    x: str
    y: str
    points: list[FrontPoint]
    front: list[FrontPoint]
    unreached_classes: int
    classes: int


def _to_target(objective: str) -> str:
    """The to-target column of ``objective`` (a per-round objective: its to-target form)."""
    return OBJECTIVES[objective if objective in TARGET_OBJECTIVES else f"{objective}_to_target"]


def target_fronts(rows: list[dict[str, Any]], objective: str, suffix: str = "",
                  allowed: Callable[[dict[str, Any]], bool] | None = None) -> list[TargetFront]:
    """The cost-to-target panels of ``pareto.png`` for the target whose columns end in ``suffix``.

    x: the objective's cost to the target (a per-round objective: its to-target form); y: the predicted
    round, then the other to-target cost (bytes, or device energy when the objective is bytes). Drawn:
    the plans that reach the target and are ``allowed`` (default: ``feasible``; for a target other
    than the first, ``flexpl plan`` passes "meets the constraints", since ``feasible`` under a
    to-target objective also means reaching the first target); the classes none of whose plans reach
    it are counted. Empty when the rows carry no to-target columns.
    """
    if not rows or f"reaches{suffix}" not in rows[0]:
        return []
    col = _to_target(objective)
    other = "device_energy_j_to_target" if col == "bytes_to_target" else "bytes_to_target"
    classes = {r["learning_class"] for r in rows}
    reached = {r["learning_class"] for r in rows if r[f"reaches{suffix}"]}
    ok = allowed or (lambda r: bool(r.get("feasible")))
    drawn = [r for r in rows if ok(r) and r[f"reaches{suffix}"]]

    def num(v: Any) -> float:
        return math.inf if v is None else float(v)

    out = []
    for y in ("round_to_target", other):
        pts = [FrontPoint(r["plan"], r["learning_class"], num(r[col + suffix]), num(r[f"{col}_lo{suffix}"]),
                          num(r[f"{col}_hi{suffix}"]), num(r[y + suffix]), num(r[f"{y}_lo{suffix}"]),
                          num(r[f"{y}_hi{suffix}"])) for r in drawn]
        front: list[FrontPoint] = []
        for p in sorted(pts, key=lambda p: (p.x, p.y)):
            if not front or p.y < front[-1].y:
                front.append(p)
        out.append(TargetFront(col, y, pts, front, len(classes - reached), len(classes)))
    return out


def plot_pareto(rows: list[dict[str, Any]], objective: str, path: Path, target: float | Sequence[float] | None = None,
                allowed: Callable[[dict[str, Any]], bool] | None = None) -> None:
    """``pareto.png``: the objective against bytes and against time per round, the front highlighted; with
    to-target columns, one more row of cost-to-target fronts per target (``target``: the ``--target-accuracy``
    values, first first; a single float: that target's unsuffixed columns). ``allowed``: which plans the
    rows of the targets after the first may draw (:func:`target_fronts`)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flexpl.io.results import atomic_write

    col = OBJECTIVES[objective]
    targets = [target] if isinstance(target, (int, float)) else list(target or [])
    # one row per target: the first's unsuffixed columns (what the objective reads), then each other's own
    fronts = [target_fronts(rows, objective)] if target_fronts(rows, objective) else []
    if fronts:
        fronts += [f for a in targets[1:] if (f := target_fronts(rows, objective, f"_{a:g}", allowed))]
    fig, grid = plt.subplots(1 + len(fronts), 2, figsize=(12, 5 * (1 + len(fronts))), squeeze=False)
    axes = grid[0]
    for ax, x in zip(axes, ("bytes_per_round", "sim_time_s_per_round")):
        for feasible, style in ((False, {"c": "lightgrey", "marker": "x"}), (True, {"c": "tab:blue", "s": 14})):
            pts = [r for r in rows if r["feasible"] == feasible and not r["pareto"]]
            ax.scatter([r[x] for r in pts], [r[col] for r in pts], label="infeasible" if not feasible
                       else "feasible", **style)
        front = sorted((r for r in rows if r["pareto"]), key=lambda r: r[x])
        ax.plot([r[x] for r in front], [r[col] for r in front], "o-", c="tab:red", label="Pareto front")
        for r in front:
            ax.annotate(r["plan"], (r[x], r[col]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        best = next(r for r in rows if r["recommended"])
        ax.scatter([best[x]], [best[col]], marker="*", s=220, c="gold", edgecolors="k", zorder=5,
                   label="recommended")
        # log axes spread plans over orders of magnitude; a zero (e.g. free energy) needs linear
        ax.set_xscale("log" if all(r[x] > 0 for r in rows) else "linear")
        ax.set_yscale("log" if all(r[col] > 0 and math.isfinite(r[col]) for r in rows) else "linear")
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(col.replace("_", " "))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    for i, row_fronts in enumerate(fronts):
        for ax, f in zip(grid[1 + i], row_fronts):
            _draw_front(ax, f, targets[i] if i < len(targets) else None)
    shown = ", ".join(f"{a:g}" for a in targets[:len(fronts)])
    fig.suptitle(f"flexpl plan: {objective} against bytes and time (per round)"
                 + (f"; below, cost to accuracy {shown} (a row each)" if fronts and shown else ""))
    # fixed margins (in inches, whatever the rows): tight_layout measured every text first, which took
    # 0.6-0.9 s of `flexpl plan fog-imagenet`'s wall against 0.4 s for the whole figure without it
    h = 5.0 * (1 + len(fronts))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.6 / h, top=1 - 0.55 / h, wspace=0.22,
                        hspace=0.3 if fronts else 0.2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _draw_front(ax: Any, f: TargetFront, target: float | None) -> None:
    """One cost-to-target panel: every drawn plan with its interval bars, the front joined and named."""
    what = f"accuracy {target:g}" if target is not None else "the target"
    ax.set_title(f"{f.unreached_classes} of {f.classes} learning classes do not reach {what} (not drawn)",
                 fontsize=9)
    ax.set_xlabel(f.x.replace("_", " "))
    ax.set_ylabel(f.y.replace("_", " "))
    ax.grid(True, which="both", alpha=0.3)
    if not f.points:
        return
    # an interval bound beyond the last round is infinite: its bar runs to the largest finite value drawn
    top_x = max((v for p in f.points for v in (p.x, p.x_hi) if math.isfinite(v)), default=1.0)
    top_y = max((v for p in f.points for v in (p.y, p.y_hi) if math.isfinite(v)), default=1.0)
    on_front = {p.plan for p in f.front}
    for group, style in ((False, {"c": "tab:blue", "ms": 4}), (True, {"c": "tab:red", "ms": 6})):
        pts = [p for p in f.points if (p.plan in on_front) == group]
        if not pts:
            continue
        ax.errorbar([p.x for p in pts], [p.y for p in pts],
                    xerr=[[max(p.x - p.x_lo, 0.0) for p in pts], [max(min(p.x_hi, top_x) - p.x, 0.0) for p in pts]],
                    yerr=[[max(p.y - p.y_lo, 0.0) for p in pts], [max(min(p.y_hi, top_y) - p.y, 0.0) for p in pts]],
                    fmt="o", elinewidth=0.8, capsize=2, alpha=0.8 if group else 0.4,
                    label="Pareto front" if group else "reaches the target", **style)
    ax.plot([p.x for p in f.front], [p.y for p in f.front], "-", c="tab:red")
    for p in f.front:
        ax.annotate(p.plan, (p.x, p.y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if all(p.x_lo > 0 for p in f.points):
        ax.set_xscale("log")
    ax.legend(fontsize=8)
