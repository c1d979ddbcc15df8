"""Defaults that train: every built-in scenario x every preset, at its default partition and at alpha 0.1.

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/no_chance.py --out results/no-chance
    python benchmarks/no_chance.py --scenarios digits-star --out /tmp/nc   # seconds

Each scenario runs every preset twice with ``flexpl run`` (one folder per cell, laid out as
a sweep's; a cell with a ``summary.json`` is reused, so rerunning the same command finishes
it): once as written and once with ``data.partition: {kind: dirichlet, alpha: 0.1}``, on a
small slice for a few rounds (``SLICES``; the scenario's own optimizer and
``strategy_overrides``). A cell fails when its run diverged or its final test accuracy is
<= 0.15 (chance on ten classes is 0.10); a preset that does not apply to the scenario (exit
2, e.g. ``fpl-features`` cannot cut 28x28 images into 10 patches) is listed as n/a. Prints the matrix (``final_accuracy``, with the worst
path's where a plan has several) and writes ``no_chance.csv``; exits 1 when a cell fails.
``fog-imagenet`` is left out: synthetic random images over 1,000 classes, for costing only.
Too slow for ``make test`` (minutes per scenario on two cores), hence a benchmark.
"""

from __future__ import annotations

import argparse
import csv
import json
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
    # 200 test images: FPL evaluates every device's path (100 of them), 8x the round's training FLOPs at 500
    "cnn-100": ["data.max_train=2000", "data.max_test=200", "training.rounds=3"],
    "fog-cifar": ["model.width=0.25", "data.max_train=1000", "data.max_test=200", "training.rounds=3"],
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
            for preset in a.presets.split(","):
                cell = folder / f"strategy={preset}"  # the layout of a flexpl sweep cell
                sets = [f"strategy={preset}", *SLICES.get(scn, []), *extra, *a.set]
                note = ""
                if not (cell / "summary.json").exists():
                    cmd = [flexpl, "run", scn, "--quiet", "--out", str(cell)]
                    for s in sets:
                        cmd += ["--set", s]
                    print(" ".join(cmd[1:]), flush=True)
                    r = subprocess.run(cmd, check=False, env=os.environ.copy(), capture_output=True, text=True)
                    if r.returncode == 2:  # this plan does not apply to this scenario (one-line error)
                        note = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "exit 2"
                try:
                    summary = json.loads((cell / "summary.json").read_text())
                except (OSError, ValueError):
                    summary = {}
                acc = _float(summary.get("final_accuracy"))
                worst = _float(summary.get("accuracy_min"))
                diverged = bool(summary.get("diverged"))
                applies = not note
                ok = not applies or (not diverged and math.isfinite(acc) and acc > CHANCE)
                failed += not ok
                rows.append({"scenario": scn, "partition": label, "preset": preset, "final_accuracy": acc,
                             "accuracy_min": worst, "diverged": diverged, "ok": ok, "note": note})
    with open(out / "no_chance.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{'scenario':14} {'partition':10} {'preset':13} {'acc':>6} {'worst':>6}  ok")
    for r in rows:
        verdict = "ok" if r["ok"] else "FAIL" + (" (diverged)" if r["diverged"] else "")
        print(f"{r['scenario']:14} {r['partition']:10} {r['preset']:13} {r['final_accuracy']:6.3f} "
              f"{r['accuracy_min']:6.3f}  {verdict if not r['note'] else 'n/a: ' + r['note']}")
    print(f"{failed} of {len(rows)} cells at chance (<= {CHANCE}) or diverged")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
