"""``pareto.png`` of ``flexpl plan``: each plan's objective against its bytes and its time per round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flexpl.planner.choose import OBJECTIVES


def plot_pareto(rows: list[dict[str, Any]], objective: str, path: Path) -> None:
    """``pareto.png``: the objective against bytes and against time; the front highlighted."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flexpl.io.results import atomic_write

    col = OBJECTIVES[objective]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
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
        ax.set_yscale("log" if all(r[col] > 0 for r in rows) else "linear")
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(col.replace("_", " "))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"flexpl plan: {objective} against bytes and time (per round)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
