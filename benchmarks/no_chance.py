"""Defaults that train: every built-in scenario x every preset, at its default partition and at alpha 0.1.

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/no_chance.py --out results/no-chance
    python benchmarks/no_chance.py --scenarios digits-star --out /tmp/nc   # seconds

Each scenario runs twice through ``flexpl sweep`` (resumable: rerun the same command to
finish): once as written and once with ``data.partition: {kind: dirichlet, alpha: 0.1}``,
every preset on a small slice for a few rounds (``SLICES``; the scenario's own optimizer and
``strategy_overrides``). A cell fails when its run diverged or its final test accuracy is
<= 0.15 (chance on ten classes is 0.10). Prints the matrix (``final_accuracy``, with the worst
path's where a plan has several) and writes ``no_chance.csv``; exits 1 when a cell fails.
``fog-imagenet`` is left out: synthetic random images over 1,000 classes, for costing only.
Too slow for ``make test`` (minutes per scenario on two cores), hence a benchmark.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

PRESETS = "centralized,fl,sl,sfl,mp,fpl,fpl-features,fpl-sync,fpl-group"
CHANCE = 0.15
# scenario -> (slice and rounds as --set items); small enough to run on a laptop CPU
SLICES: dict[str, list[str]] = {
    "digits-star": [],
    "edge-fmnist": ["data.max_train=1000", "data.max_test=500", "training.rounds=3"],
    "fmnist-star10": ["data.max_train=1000", "data.max_test=500", "training.rounds=3"],
    "mlp-1000": ["data.max_train=5000", "data.max_test=500", "training.rounds=3"],
    "cnn-100": ["data.max_train=2000", "data.max_test=500", "training.rounds=3"],
    "fog-cifar": ["model.width=0.25", "data.max_train=1000", "data.max_test=500", "training.rounds=3"],
}
SKEWED = ["data.partition.kind=dirichlet", "data.partition.alpha=0.1"]


def _float(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def main() -> int:
    """Run the sweeps, print the matrix, write no_chance.csv; 1 when a cell ends at chance or diverged."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default=",".join(SLICES))
    p.add_argument("--presets", default=PRESETS)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="added to every run")
    p.add_argument("--out", default="results/no-chance")
    p.add_argument("--jobs", type=int, default=1)
    a = p.parse_args()
    flexpl = str(Path(sys.executable).with_name("flexpl"))
    out = Path(a.out)
    rows, failed = [], 0
    for scn in a.scenarios.split(","):
        for label, extra in (("default", []), ("alpha=0.1", SKEWED)):
            folder = out / f"{scn}__{label.replace('=', '')}"
            cmd = [flexpl, "sweep", scn, "--grid", f"strategy={a.presets}", "--jobs", str(a.jobs),
                   "--quiet", "--out", str(folder)]
            for s in [*SLICES.get(scn, []), *extra, *a.set]:
                cmd += ["--set", s]
            print(" ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=False, env=os.environ.copy())
            try:
                with open(folder / "sweep.csv", newline="") as f:
                    cells = {r["strategy"]: r for r in csv.DictReader(f)}
            except OSError:
                cells = {}
            for preset in a.presets.split(","):
                r = cells.get(preset, {})
                acc, worst = _float(r.get("final_accuracy")), _float(r.get("accuracy_min"))
                diverged = bool(r.get("diverged"))
                ok = not diverged and math.isfinite(acc) and acc > CHANCE
                failed += not ok
                rows.append({"scenario": scn, "partition": label, "preset": preset, "final_accuracy": acc,
                             "accuracy_min": worst, "diverged": diverged, "ok": ok})
    with open(out / "no_chance.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{'scenario':14} {'partition':10} {'preset':13} {'acc':>6} {'worst':>6}  ok")
    for r in rows:
        print(f"{r['scenario']:14} {r['partition']:10} {r['preset']:13} {r['final_accuracy']:6.3f} "
              f"{r['accuracy_min']:6.3f}  {'ok' if r['ok'] else 'FAIL' + (' (diverged)' if r['diverged'] else '')}")
    print(f"{failed} of {len(rows)} cells at chance (<= {CHANCE}) or diverged")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
