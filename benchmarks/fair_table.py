"""The fair-study table from a ``flexpl sweep --seeds`` folder (see benchmarks/fair_study.sh).

    python benchmarks/fair_table.py results/fair-study/alpha0.1

Reads ``sweep_seeds.csv`` (one row per strategy and seed) and prints a Markdown table: test
accuracy after the last round and the worst path's (``accuracy_min``), mean ± sample std over
the seeds that ran; then per-run means of bytes, energy (all nodes, and on the data-holding
devices), simulated time and parameters held; and each strategy's accuracy gap, bytes and
device energy relative to FL. Diverged runs are counted, not averaged. A gap marked ``~`` is
smaller than the spread (the larger of the two seed standard deviations): the seeds do not
separate that strategy from FL. Under the table, one line per FPL plan says whether its mean
accuracy comes within 1 point of FL's, and at what bytes and device energy relative to FL.
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from pathlib import Path


def _num(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _ms(xs: list[float], scale: float = 1.0, fmt: str = "{:.3f}") -> str:
    xs = [x * scale for x in xs if math.isfinite(x)]
    if not xs:
        return "-"
    s = fmt.format(statistics.fmean(xs))
    return s + (" ± " + fmt.format(statistics.stdev(xs)) if len(xs) > 1 else "")


def table(folder: Path) -> str:
    """The Markdown table for one sweep folder."""
    with open(folder / "sweep_seeds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by.setdefault(r["strategy"], []).append(r)
    cols = ["strategy", "seeds", "diverged", "accuracy", "worst-path acc.", "MB moved", "energy kJ",
            "device energy kJ", "sim. time s", "params_total", "Δacc vs FL (pt)", "bytes / FL",
            "device energy / FL"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def mean(s: str, key: str) -> float:
        xs = [_num(r.get(key)) for r in by.get(s, []) if not r.get("diverged")]
        xs = [x for x in xs if math.isfinite(x)]
        return statistics.fmean(xs) if xs else math.nan

    def std(s: str, key: str) -> float:
        xs = [_num(r.get(key)) for r in by.get(s, []) if not r.get("diverged")]
        xs = [x for x in xs if math.isfinite(x)]
        return statistics.stdev(xs) if len(xs) > 1 else math.nan

    notes = []
    for s, rs in by.items():
        ok = [r for r in rs if not r.get("diverged")]
        col = {k: [_num(r.get(k)) for r in ok] for k in
               ("final_accuracy", "accuracy_min", "bytes_total", "energy_j_total", "device_energy_j_total",
                "sim_time_s", "params_total")}
        gap = 100 * (mean(s, "final_accuracy") - mean("fl", "final_accuracy"))
        spread = 100 * max(std(s, "final_accuracy"), std("fl", "final_accuracy"))  # nan with one seed
        within = " ~" if s != "fl" and math.isfinite(gap) and abs(gap) < spread else ""
        rel_b = mean(s, "bytes_total") / mean("fl", "bytes_total")
        rel_e = mean(s, "device_energy_j_total") / mean("fl", "device_energy_j_total")
        if s.startswith("fpl") and math.isfinite(gap):
            notes.append(f"{s}: {gap:+.1f} pt vs FL ({'within' if gap >= -1.0 else 'not within'} 1 point), "
                         f"bytes {rel_b:.2f}x FL, device energy {rel_e:.2f}x FL")
        out.append("| " + " | ".join([
            s, str(len(rs)), str(len(rs) - len(ok)), _ms(col["final_accuracy"]), _ms(col["accuracy_min"]),
            _ms(col["bytes_total"], 1e-6, "{:.0f}"), _ms(col["energy_j_total"], 1e-3, "{:.2f}"),
            _ms(col["device_energy_j_total"], 1e-3, "{:.2f}"), _ms(col["sim_time_s"], 1.0, "{:.0f}"),
            _ms(col["params_total"], 1.0, "{:.0f}"), f"{gap:+.1f}{within}", f"{rel_b:.2f}", f"{rel_e:.2f}",
        ]) + " |")
    if notes:
        out += ["", "~: the gap is smaller than the larger seed standard deviation of the two.", ""]
        out += [f"- {n}" for n in notes]
    return "\n".join(out)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"{arg}:\n\n{table(Path(arg))}\n")
