"""Cells per minute: the same sweep with ``--jobs N`` (worker processes) and ``--ray --jobs N`` (a local Ray).

The sweep is edge-fmnist, FedAvg, over a grid of Dirichlet alphas and seeds (8 cells by
default), on a slice of Fashion-MNIST so that a cell takes tens of seconds. Each way runs
into a fresh folder, one after the other (never at the same time: both want the same N
cores), ``--repeats`` times in alternating order; the table gives wall time, cells per
minute and the 1-minute load average before and after each run. The Ray wall time includes
starting the local Ray and its workers (what a user waits for).

    python benchmarks/ray_sweep.py [--jobs 2] [--repeats 1] [--max-train 4000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep_argv(args: argparse.Namespace, out: Path, ray: bool) -> list[str]:
    """The flexpl sweep command line of one way."""
    exe = str(Path(sys.executable).parent / "flexpl")
    alphas = ",".join(["0.1", "0.3", "1.0", "3.0", "10.0", "30.0"][: max(args.cells // 2, 1)])
    argv = [exe, "sweep", "edge-fmnist", "--set", f"training.rounds={args.rounds}",
            "--set", f"data.max_train={args.max_train}", "--set", f"data.max_test={args.max_test}",
            "--grid", "strategy=fl", "--grid", f"data.partition.alpha={alphas}", "--grid", "seed=0,1",
            "--out", str(out), "--quiet"]
    return [*argv, "--ray", "--jobs", str(args.jobs)] if ray else [*argv, "--jobs", str(args.jobs)]


def main() -> None:
    """Run both ways ``--repeats`` times and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--cells", type=int, default=8, help="even, at most 12 (alphas x seeds 0,1)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--max-train", type=int, default=4000)
    p.add_argument("--max-test", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="flexpl-ray-bench-"))
    print(f"{'way':16s} {'cells':>5s} {'wall_s':>8s} {'cells/min':>9s} {'load_before':>11s} {'load_after':>10s}")
    try:
        for rep in range(args.repeats):
            order = [False, True] if rep % 2 == 0 else [True, False]
            for ray in order:
                out = root / f"{'ray' if ray else 'jobs'}-{rep}"
                before = os.getloadavg()[0]
                t0 = time.perf_counter()
                subprocess.run(sweep_argv(args, out, ray), check=True)
                wall = time.perf_counter() - t0
                after = os.getloadavg()[0]
                n = sum(1 for _ in out.glob("*/summary.json"))
                way = f"--ray --jobs {args.jobs}" if ray else f"--jobs {args.jobs}"
                print(f"{way:16s} {n:5d} {wall:8.1f} {60 * n / wall:9.2f} {before:11.2f} {after:10.2f}",
                      flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
