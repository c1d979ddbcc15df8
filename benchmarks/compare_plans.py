"""Compare two folders of ``flexpl plan`` outputs row by row: is every prediction unchanged?

    python benchmarks/compare_plans.py BASE_DIR NEW_DIR [--rel 1e-12]

Each folder holds one sub-folder per scenario with its ``plans.csv`` (``flexpl plan
SCENARIO --out DIR/SCENARIO``). Rows are matched by ``plan``; FLOP, byte, count and
identity columns must be identical, float columns (times, energy) equal to within
``--rel`` relative. ``predict_ms`` (a wall time) is ignored. Prints one line per scenario
and exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

FLOAT_COLUMNS = {"sim_time_s_per_round", "energy_j_per_round", "device_energy_j_per_round",
                 "energy_j_compute_per_round", "energy_j_comm_per_round", "sim_time_s", "energy_j_total",
                 "device_energy_j_total"}
IGNORED = {"predict_ms"}


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {r["plan"]: r for r in csv.DictReader(f)}


def compare(base: Path, new: Path, rel: float) -> list[str]:
    """Differences between two plans.csv files, one line each (empty: the same predictions)."""
    a, b = _rows(base), _rows(new)
    out = [f"missing row {p!r}" for p in a if p not in b] + [f"extra row {p!r}" for p in b if p not in a]
    for plan, ra in a.items():
        rb = b.get(plan)
        if rb is None:
            continue
        for col, va in ra.items():
            if col in IGNORED:
                continue
            vb = rb.get(col)
            if col in FLOAT_COLUMNS:
                x, y = float(va), float(vb)
                if not (x == y or abs(x - y) <= rel * max(abs(x), abs(y)) or (math.isnan(x) and math.isnan(y))):
                    out.append(f"{plan!r} {col}: {va} != {vb} (rel {abs(x - y) / max(abs(x), abs(y)):.2e})")
            elif va != vb:
                out.append(f"{plan!r} {col}: {va} != {vb}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--rel", type=float, default=1e-12)
    args = ap.parse_args()
    bad = 0
    for d in sorted(p for p in args.base.iterdir() if (p / "plans.csv").exists()):
        other = args.new / d.name / "plans.csv"
        if not other.exists():
            print(f"{d.name}: MISSING {other}")
            bad += 1
            continue
        diffs = compare(d / "plans.csv", other, args.rel)
        n = len(_rows(d / "plans.csv"))
        worst = max((float(x.rsplit("rel ", 1)[1].rstrip(")")) for x in diffs if "(rel " in x), default=0.0)
        print(f"{d.name}: {n} rows, " + ("identical (FLOPs/bytes exact, floats within "
                                          f"{args.rel:g})" if not diffs else f"{len(diffs)} differences, "
                                          f"worst rel {worst:.2e}"))
        for line in diffs[:10]:
            print("   ", line)
        bad += bool(diffs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
