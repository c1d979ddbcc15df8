"""Per-device cuts by structure: plans per second over the whole space of one parent (edge-fmnist).

Walks the plans that fix the structure of the parent's per-device-cut space
(:func:`flexpl.planner.search.cut_structure`), then costs every plan of the space from it
(``(c+1)^N`` plans: 65,536 for ``fpl-sync cut=3`` over 8 devices), runs the exact search for
each per-round objective with and without ``raw_data_moved==false``, and walks ``--sample``
random plans exactly to compare (and to time the walk each plan would otherwise need).
Every figure printed is measured in this run.

    python benchmarks/device_cuts.py [--scenario edge-fmnist] [--strategy fpl-sync] [--cut 3] [--sample 20]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import time

from flexpl import planner as P
from flexpl.config.scenario import load_scenario
from flexpl.planner.choose import parse_constraint
from flexpl.planner.search import SEARCH_COLUMNS, best_device_cuts, cut_structure, with_cuts


def main() -> None:
    """Parse options, cost the whole space by structure, search it, check a sample against the walk."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="edge-fmnist")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--strategy", default="fpl-sync")
    ap.add_argument("--cut", type=int, default=3)
    ap.add_argument("--sample", type=int, default=20, help="random plans walked exactly to compare")
    a = ap.parse_args()
    print(f"load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}, cpus {os.cpu_count()}")
    t = time.perf_counter()
    scn = load_scenario(a.scenario, a.set)
    planner = P.Planner(scn)
    parent = P.Candidate(f"{a.strategy} cut={a.cut}", a.strategy, {"cut": a.cut}, a.strategy, str(a.cut))
    planner.predict(parent)  # count the stages' FLOPs once (as every run of flexpl plan does first)
    setup = time.perf_counter() - t
    t = time.perf_counter()
    st = cut_structure(planner, parent)
    t_struct = time.perf_counter() - t
    t = time.perf_counter()
    n = 0
    best = math.inf
    for combo in itertools.product(st.options, repeat=len(st.devices)):
        q = st.vector(dict(zip(st.devices, combo)))
        cols = {col: st.column(q, col) for col in ("energy_j_per_round", "device_energy_j_per_round",
                                                   "bytes_per_round", "raw_data_moved", "device_memory_fits")}
        best = min(best, cols["device_energy_j_per_round"])
        n += 1
    t_all = time.perf_counter() - t
    print(f"scenario {scn.name} ({scn.training.rounds} rounds), parent '{parent.label}': {n:,} plans "
          f"({len(st.options)} cuts over {len(st.devices)} devices); setup {setup:.1f} s")
    print(f"structure: {st.walks} exact walks in {t_struct:.1f} s; every plan's columns from it in {t_all:.1f} s")
    print(f"whole space by structure: {t_struct + t_all:.1f} s = {n / (t_struct + t_all):,.0f} plans/s "
          "(goal: the whole space in under 60 s)")
    for obj in ("energy", "device_energy", "bytes"):
        for cons in ([], ["raw_data_moved==false"]):
            t = time.perf_counter()
            res = best_device_cuts(planner, parent, obj, [parse_constraint(c) for c in cons], structure=st)
            dt = time.perf_counter() - t
            cuts = ",".join(str(res.cuts[d]) for d in st.devices) if res.cuts else "-"
            print(f"search {obj:14s} {' '.join(cons) or '(no constraint)':24s} cuts {cuts}  "
                  f"value {res.value:.6g}  in {dt:.2f} s (its exact walk included)")
    rng = random.Random(0)
    t = time.perf_counter()
    worst = 0.0
    for _ in range(a.sample):
        cuts = {d: rng.choice(st.options) for d in st.devices}
        row = planner.predict(with_cuts(parent, cuts)).row
        q = st.vector(cuts)
        for col in SEARCH_COLUMNS:
            x, y = st.column(q, col), row[col]
            if isinstance(y, bool) or isinstance(y, int):
                assert x == y, (cuts, col, x, y)
            else:
                worst = max(worst, abs(x - y) / max(abs(y), 1e-300))
    dt = (time.perf_counter() - t) / max(a.sample, 1)
    print(f"exact walk: {dt * 1e3:.0f} ms a plan ({1 / dt:.1f} plans/s; the whole space would take "
          f"{n * dt / 60:.0f} min); {a.sample} random plans: structure = walk (integers equal, "
          f"floats within {worst:.1e} relative)")


if __name__ == "__main__":
    main()
