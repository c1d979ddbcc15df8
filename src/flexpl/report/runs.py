"""The report's runs: what each run folder holds, read back (:class:`Run`), and grouped over seeds.

Below :mod:`flexpl.report.plots` and :mod:`flexpl.report.tables`, which draw and tabulate
these runs, and :mod:`flexpl.report.html`, which assembles the page. matplotlib is imported only
to pick each run's colour.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexpl.costs.targets import as_float
from flexpl.errors import UserError
from flexpl.io.results import stale_reason
from flexpl.studies.seeds import seed_groups


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
    see ``flexpl.io.results.stale_reason``) is left out, with one warning line on stderr.
    """
    import sys

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
        rounds = [{k: as_float(v) for k, v in r.items()} for r in _read_csv(p / "rounds.csv")]
        timeline = [{**r, **{k: as_float(r[k]) for k in ("round", "start_s", "end_s", "flops", "bytes")}}
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


# ---------------------------------------------------------------- several seeds (flexpl.studies.seeds)


@dataclass
class SeedGroup:
    """The runs of one strategy (sweep cell) over several seeds: ``<name>/seed<k>`` folders."""

    name: str
    runs: list[Run]
    color: str = "C0"


def seed_groups_of(runs: list[Run]) -> list[SeedGroup]:
    """Runs grouped by strategy (cell) over seeds; empty unless some group has two seeds or more."""
    groups = seed_groups([r.name for r in runs])
    if not any(len(v) > 1 for v in groups.values()):
        return []
    out = []
    for name, members in groups.items():
        rs = [runs[i] for _, i in sorted(members)]
        out.append(SeedGroup(name, rs, rs[0].color))
    return out
