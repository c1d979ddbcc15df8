"""The grid of ``flexpl sweep`` and ``flexpl tune``: ``--grid KEY=V1,V2,...`` axes, their cells, the cells' folder names.

Each ``--grid KEY=V1,V2,...`` is one axis. ``strategy`` picks the preset; any other KEY is a
``--set`` dotted key whose values are parsed as YAML (so ``[1,2]`` stays one value). A cell is
one point of the Cartesian product, run into its own folder named from its values
(``strategy=fl__data.partition.alpha=0.1``); :mod:`flexpl.studies.sweep` runs them.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from flexpl.errors import UserError
from flexpl.studies.seeds import SEED_DIR

# Characters kept verbatim in a cell's folder name; anything else becomes "_" (plus a hash).
_SAFE = re.compile(r"[^A-Za-z0-9._=+-]")
_MAX_NAME = 180  # leaves room under the usual 255-byte file-name limit


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its folder name, its (key, raw value) pairs and what to run."""

    name: str
    values: tuple[tuple[str, str], ...]
    strategy: str | None
    sets: tuple[str, ...]


def split_values(raw: str) -> list[str]:
    """Split ``V1,V2,...`` on commas that are not inside ``[...]`` or ``{...}`` (YAML lists stay whole)."""
    out, depth, cur = [], 0, []
    for ch in raw:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Parse ``--grid KEY=V1,V2`` items into ``[(key, [raw values])]``; a bad item is a ``UserError``."""
    if not specs:
        raise UserError("--grid: no grid given; add at least one axis, e.g. --grid strategy=fl,fpl")
    axes: list[tuple[str, list[str]]] = []
    for spec in specs:
        if "=" not in spec:
            raise UserError(f"--grid: '{spec}' is not KEY=V1,V2,... (e.g. --grid strategy=fl,fpl)")
        key, raw = spec.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise UserError(f"--grid: bad key '{key}' in '{spec}'; use 'strategy' or a dotted "
                            "scenario field such as data.partition.alpha")
        values = split_values(raw)
        if any(v == "" for v in values):
            raise UserError(f"--grid {key}: empty value in '{raw}'; give comma-separated values, "
                            f"e.g. --grid {key}=1,2")
        if len(set(values)) != len(values):
            raise UserError(f"--grid {key}: repeated value in '{raw}'; list each value once")
        if any(k == key for k, _ in axes):
            raise UserError(f"--grid: key '{key}' given twice; put all its values in one --grid")
        axes.append((key, values))
    return axes


def cell_name(values: Sequence[tuple[str, str]]) -> str:
    """A stable, readable folder name such as ``strategy=fl__data.partition.alpha=0.1``.

    Characters that are unsafe in a file name become ``_``; then a short hash of the exact
    values is appended so that two cells never share a folder.
    """
    exact = "__".join(f"{k}={v}" for k, v in values)
    name = _SAFE.sub("_", exact)
    if name != exact or len(name) > _MAX_NAME:
        digest = hashlib.sha1(exact.encode()).hexdigest()[:8]
        name = f"{name[:_MAX_NAME]}__{digest}"
    return name


def make_cells(axes: Sequence[tuple[str, list[str]]]) -> list[Cell]:
    """The Cartesian product of the axes, in the order given (first axis varies slowest)."""
    cells = []
    for combo in itertools.product(*(vals for _, vals in axes)):
        values = tuple((k, v) for (k, _), v in zip(axes, combo))
        strategy = next((v for k, v in values if k == "strategy"), None)
        sets = tuple(f"{k}={v}" for k, v in values if k != "strategy")
        cells.append(Cell(cell_name(values), values, strategy, sets))
    return cells


def seed_cells(cells: Sequence[Cell], seeds: Sequence[int]) -> list[Cell]:
    """Every cell once per seed: folder ``<cell>/seed<k>``, the seed given as a ``seed=<k>`` override."""
    return [Cell(f"{c.name}/{SEED_DIR.format(k)}", c.values, c.strategy, (*c.sets, f"seed={k}"))
            for c in cells for k in seeds]
