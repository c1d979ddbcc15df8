"""Wall and CPU time of ``flexpl plan SCENARIO`` (goal on fog-imagenet: under 10 s on 2 cores), against a baseline.

Runs the command in a fresh process (imports, costing, pareto.png and best.yaml included, no
accuracy pilots) for this source tree and, with ``--baseline-src DIR``, for another one (e.g. an
export of an older commit: ``git archive COMMIT src | tar -x -C /tmp/base``), alternating, and
checks that both wrote the same plans.csv (every column but ``predict_ms``) and best.yaml. Prints
the load average before each run: on a shared machine the wall depends on it, the CPU time less.

    python benchmarks/plan_wall.py [--scenario fog-imagenet] [--repeats 1] [--baseline-src /tmp/base/src]
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def run(src: Path, scenario: str, out: Path, sets: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one ``flexpl plan`` with ``src`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "flexpl.cli", "plan", scenario, "--quiet", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def rows(out: Path) -> list[dict[str, str]]:
    """plans.csv without the ``predict_ms`` column (the only one that depends on the machine)."""
    with (out / "plans.csv").open() as f:
        return [{k: v for k, v in r.items() if k != "predict_ms"} for r in csv.DictReader(f)]


def main() -> None:
    """Time this tree (and the baseline), print the figures, compare the outputs."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="fog-imagenet")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--baseline-src", type=Path, default=None, metavar="DIR")
    a = ap.parse_args()
    trees = [("this tree", SRC)] + ([("baseline", a.baseline_src)] if a.baseline_src else [])
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            for name, src in trees:
                out = Path(tmp) / f"{name.replace(' ', '-')}-{i}"
                load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                wall, cpu = run(src, a.scenario, out, a.set)
                n = len(rows(out))
                print(f"flexpl plan {a.scenario} ({name}): {n} plans, wall {wall:.1f} s, CPU {cpu:.1f} s "
                      f"(load average before: {load}; {os.cpu_count()} cpus)")
        if a.baseline_src:
            mine, base = Path(tmp) / "this-tree-0", Path(tmp) / "baseline-0"
            same = rows(mine) == rows(base) and (mine / "best.yaml").read_text() == (base / "best.yaml").read_text()
            print(f"plans.csv (every column but predict_ms) and best.yaml identical to the baseline: {same}")


if __name__ == "__main__":
    main()
