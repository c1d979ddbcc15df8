"""Tables for the paper: the comparison of a compare or sweep folder as LaTeX, Markdown or CSV.

:func:`paper_table` reads the folder (:func:`flexpl.report.runs.load_runs`) and returns the
data: one row per strategy (sweep cell), each column a ``(mean, std, n)`` over its seeds
(``std`` is None with one seed), and per column the index of the best row. :func:`render`
writes that data in one format; ``flexpl report DIR --format F`` calls both.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexpl.costs.targets import as_float
from flexpl.errors import UserError
from flexpl.report.runs import Run, load_runs
from flexpl.studies.seeds import mean_std, seed_groups

FORMATS = {"latex": "tex", "markdown": "md", "csv": "csv"}


@dataclass(frozen=True)
class Column:
    """One column of the paper table: a summary key, its header with the unit, a scale and a direction."""

    key: str
    header: str  # with the unit
    scale: float  # the summary value is multiplied by this before it is shown
    best: int  # +1: the largest mean is best, -1: the smallest
    digits: int  # decimals shown at least (more where the smallest mean needs them for 3 significant digits)


COLUMNS: tuple[Column, ...] = (
    Column("final_accuracy", "Accuracy (%)", 100.0, 1, 2),
    Column("accuracy_min", "Worst-path acc. (%)", 100.0, 1, 2),
    Column("bytes_total", "Traffic (MB)", 1e-6, -1, 2),
    Column("flops_total", "Compute (GFLOP)", 1e-9, -1, 2),
    Column("sim_time_s", "Time (s)", 1.0, -1, 2),
    Column("energy_j_total", "Energy (J)", 1.0, -1, 2),
    Column("params_total", "Params (k)", 1e-3, -1, 1),
)


@dataclass
class PaperTable:
    """The data of the table: ``rows`` (name, seeds, and per column key a ``(mean, std)`` in shown units)."""

    columns: list[Column]
    names: list[str]
    seeds: list[int]
    cells: list[dict[str, tuple[float, float | None]]]
    best: dict[str, list[int]] = field(default_factory=dict)  # column key -> the rows with the best mean (ties)
    digits: dict[str, int] = field(default_factory=dict)  # column key -> decimals shown


def paper_table(root: str | Path) -> PaperTable:
    """The comparison table of a compare/sweep/run folder: mean and std over seeds, the best row per column.

    A strategy's (sweep cell's) runs over seeds (``<name>/seed<k>`` folders) make one row with
    the mean and sample std (ddof = 1); a run without seeds makes a row whose std is None.
    Columns every run lacks are left out. A folder with no finished run is a :class:`UserError`.
    """
    if not Path(root).is_dir():
        raise UserError(f"report: DIR '{root}' is not a folder; give a run, compare or sweep output folder")
    runs = load_runs(Path(root))
    if not runs:
        raise UserError(f"report: no finished run (summary.json) under {root}; run flexpl run/compare there first")
    grouped = seed_groups([r.name for r in runs])
    in_group = {i for members in grouped.values() for _, i in members}
    groups: dict[str, list[Run]] = {}  # in the folder's order; a run without seeds is its own group
    for i, r in enumerate(runs):
        if i in in_group:
            name = next(g for g, members in grouped.items() if any(j == i for _, j in members))
            groups.setdefault(name, []).append(r)
        else:
            groups[r.name] = [r]
    names, seeds, cells = [], [], []
    for name, rs in groups.items():
        label = name if name != "." else str(rs[0].summary.get("strategy", rs[0].path.name))
        row: dict[str, tuple[float, float | None]] = {}
        for col in COLUMNS:
            vals = [as_float(r.summary.get(col.key)) * col.scale for r in rs]
            vals = [v for v in vals if math.isfinite(v)]
            if not vals:
                continue
            m, s = mean_std(vals)
            row[col.key] = (float(m), float(s) if len(vals) > 1 else None)  # type: ignore[arg-type]
        names.append(label)
        seeds.append(len(rs))
        cells.append(row)
    cols = [c for c in COLUMNS if any(c.key in row for row in cells)]
    best, digits = {}, {}
    for c in cols:
        present = [(row[c.key][0], i) for i, row in enumerate(cells) if c.key in row]
        if len(cells) > 1 and present:
            top = (max if c.best > 0 else min)(m for m, _ in present)
            best[c.key] = [i for m, i in present if m == top]
        small = min((abs(m) for m, _ in present if m != 0), default=1.0)
        digits[c.key] = min(6, max(c.digits, 2 - math.floor(math.log10(small))))
    return PaperTable(cols, names, seeds, cells, best, digits)


def _num(v: float, digits: int) -> str:
    return f"{v:,.{digits}f}".replace(",", "\u2009") if abs(v) >= 1e4 else f"{v:.{digits}f}"


def _cell_text(t: PaperTable, i: int, c: Column, pm: str) -> str:
    v = t.cells[i].get(c.key)
    if v is None:
        return "–"
    m, s = v
    d = t.digits.get(c.key, c.digits)
    return _num(m, d) + ("" if s is None else f"{pm}{_num(s, d)}")


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        s = s.replace(a, b) if a != "\\" else s.replace(a, "\0")
    return s.replace("\0", r"\textbackslash{}")


def render(t: PaperTable, fmt: str) -> str:
    """The table as ``latex`` (booktabs), ``markdown`` (a pipe table) or ``csv`` (mean and std columns).

    LaTeX and Markdown show ``mean ± std`` with the best mean per column in bold; CSV has plain
    numbers (``<header> mean``, ``<header> std``) and a ``best`` column naming the columns a row wins.
    """
    many = any(n > 1 for n in t.seeds)
    if fmt == "latex":
        head = ["Strategy", *(_latex_escape(c.header) for c in t.columns)]
        if many:
            head.insert(1, "Seeds")
        lines = [r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule", " & ".join(head) + r" \\",
                 r"\midrule"]
        for i, name in enumerate(t.names):
            cells = [_latex_escape(name)] + ([str(t.seeds[i])] if many else [])
            for c in t.columns:
                txt = _cell_text(t, i, c, r" $\pm$ ").replace("\u2009", r"\,")
                cells.append(rf"\textbf{{{txt}}}" if i in t.best.get(c.key, ()) else txt)
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    if fmt == "markdown":
        head = ["Strategy", *(["Seeds"] if many else []), *(c.header for c in t.columns)]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|"]
        for i, name in enumerate(t.names):
            cells = [name] + ([str(t.seeds[i])] if many else [])
            for c in t.columns:
                txt = _cell_text(t, i, c, " ± ")
                cells.append(f"**{txt}**" if i in t.best.get(c.key, ()) else txt)
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["strategy", "seeds", *(f"{c.header} {k}" for c in t.columns for k in ("mean", "std")), "best"])
        for i, name in enumerate(t.names):
            vals: list[Any] = []
            for c in t.columns:
                m, s = t.cells[i].get(c.key, (None, None))
                vals += ["" if m is None else repr(m), "" if s is None else repr(s)]
            wins = ";".join(c.key for c in t.columns if i in t.best.get(c.key, ()))
            w.writerow([name, t.seeds[i], *vals, wins])
        return buf.getvalue()
    raise UserError(f"--format: unknown format '{fmt}'; allowed: {', '.join(FORMATS)}")


def write_paper_table(root: str | Path, fmt: str) -> tuple[Path, str]:
    """Write ``table.<ext>`` into ``root`` in format ``fmt``; returns its path and text."""
    if fmt not in FORMATS:
        raise UserError(f"--format: unknown format '{fmt}'; allowed: {', '.join(FORMATS)}")
    text = render(paper_table(root), fmt)
    path = Path(root) / f"table.{FORMATS[fmt]}"
    path.write_text(text)
    return path, text
