"""Drawing and number helpers shared by the report's parts (:mod:`flexpl.report.html`, :mod:`flexpl.report.targets`).

Below both, so neither imports the other for them. matplotlib is imported only when a
figure is drawn.
"""

from __future__ import annotations

import math
from typing import Any

DPI = 110  # every figure's resolution


def figure(w: float, h: float) -> Any:
    """A ``w`` x ``h`` inch matplotlib Figure on the Agg canvas (no display, same pixels everywhere)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def eng(unit: str) -> Any:
    """An engineering-notation tick formatter in ``unit`` (1.2 kB, 3 MJ, 40 ms)."""
    from matplotlib.ticker import EngFormatter

    return EngFormatter(unit=unit, places=None, sep=" ")


def no_data(ax: Any, what: str) -> None:
    """Mark an empty panel: "no WHAT in these runs", no ticks."""
    ax.text(0.5, 0.5, f"no {what} in these runs", ha="center", va="center", transform=ax.transAxes,
            color="#888")
    ax.set_xticks([])
    ax.set_yticks([])


def log_if_wide(ax: Any, values: list[float], axis: str = "x") -> None:
    """Put ``axis`` on a log scale when the positive ``values`` span more than ~1.5 decades."""
    pos = [v for v in values if v > 0 and math.isfinite(v)]
    if pos and max(pos) / min(pos) >= 30:  # more than ~1.5 decades: linear would squash the small ones
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def fmt_value(key: str, v: Any) -> str:
    """A summary value in a report table cell, formatted by what its key measures (bytes, energy, time ...)."""
    if isinstance(v, bool) or v is None:
        return "–" if v is None else str(v)
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            return "–"
        if "bytes" in key:
            return eng("B")(v) if v else "0 B"
        if key.startswith("energy_j"):
            return eng("J")(v) if v else "0 J"
        if key == "sim_time_s" or key == "wall_s":
            return eng("s")(v) if v else "0 s"
        if isinstance(v, int):
            return f"{v:,}" if abs(v) < 10**7 else f"{v:.3e}"
        return f"{v:.4f}" if abs(v) < 10 and key.startswith(("accuracy", "final_")) else f"{v:.4g}"
    s = str(v)
    return s if len(s) <= 20 else s[:12] + "…"
