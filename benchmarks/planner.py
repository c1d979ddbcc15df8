"""Planner speed: plans costed per second on edge-fmnist (target >= 100/s), and how many candidates.

Costs every candidate of the scenario twice in this process: a cold pass (the first,
which also counts each stage's FLOPs with FlopCounterMode, as the engine does on first
use) and warm passes (stage costs known, every round walked and clocked again). Prints
both rates, the number of candidates, and per family how many needed the whole-round
clock (see [Note: compressed rounds] in flexpl/planner/__init__.py). With ``--check K`` it also
runs K candidates through the simulator (shape-only, no training) and prints both sides.

    python benchmarks/planner.py [--scenario edge-fmnist] [--repeats 3] [--check 0]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections import defaultdict

from flexpl import planner as P
from flexpl.config.scenario import load_scenario
from flexpl.data import load_dataset
from flexpl.errors import UserError


def cost_all(planner: P.Planner, cands: list[P.Candidate]) -> tuple[float, list[tuple[P.Candidate, float, bool]]]:
    """Wall time to predict every candidate; (candidate, seconds, fast clock) per costed candidate."""
    out = []
    t0 = time.perf_counter()
    for c in cands:
        t = time.perf_counter()
        try:
            pred = planner.predict(c)
        except UserError:  # not a valid plan on this scenario (e.g. a feature junction at a bare layer)
            continue
        out.append((c, time.perf_counter() - t, pred.fast_clock))
    return time.perf_counter() - t0, out


def check(scn, planner: P.Planner, cands: list[P.Candidate], k: int) -> None:
    """Predicted against simulated (shape-only run through the engine) for ``k`` candidates."""
    from flexpl.config.scenario import validate_scenario
    from flexpl.sim.simulator import run, setup

    print(f"\n{'plan':36s} {'pred sim_time_s':>16s} {'simulated':>16s} {'rel.diff':>9s} {'bytes equal':>11s} "
          f"{'pred ms':>8s} {'sim s':>7s}")
    for c in cands[:: max(1, len(cands) // k)][:k]:
        sc = validate_scenario(P.candidate_data(scn, c))
        planner._walks.clear()  # time the prediction itself, not a cache hit
        t = time.perf_counter()
        try:
            r = planner.predict(c).row
        except UserError:
            continue
        tp = time.perf_counter() - t
        t = time.perf_counter()
        s = run(sc, st=setup(sc, dataset=planner.data, is_local=lambda n: False), evaluate=lambda st: {}).summary
        ts = time.perf_counter() - t
        rel = abs(r["sim_time_s"] - s["sim_time_s"]) / s["sim_time_s"]
        print(f"{c.label:36s} {r['sim_time_s']:16.9g} {s['sim_time_s']:16.9g} {rel:9.1e} "
              f"{str(r['bytes_total'] == s['bytes_total'] and r['flops_total'] == s['flops_total']):>11s} "
              f"{tp * 1e3:8.1f} {ts:7.1f}")


def main() -> None:
    """Parse options, cost the scenario's candidates cold then warm, print the rates."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="edge-fmnist")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--repeats", type=int, default=3, help="warm passes; the median counts")
    ap.add_argument("--check", type=int, default=0, metavar="K",
                    help="also simulate K candidates shape-only and compare (slow: seconds each)")
    a = ap.parse_args()
    scn = load_scenario(a.scenario, a.set)
    data = load_dataset(scn.data.dataset, max_train=scn.data.max_train, max_test=scn.data.max_test)
    planner = P.Planner(scn, dataset=data)
    cands = planner.candidates()
    cold, rows = cost_all(planner, cands)
    warm = []
    for _ in range(a.repeats):
        planner._walks.clear()  # walk and clock every round again; keep the stage FLOP counts
        planner._contexts.clear()
        gc.collect()
        wall, rows = cost_all(planner, cands)
        warm.append(wall)
    w = statistics.median(warm)
    n = len(rows)
    print(f"scenario {scn.name}: {len(cands)} candidates, {n} costed ({len(cands) - n} not valid here), "
          f"{scn.training.rounds} rounds each")
    print(f"cold (first pass, FLOP counting included): {cold:.2f} s = {n / cold:.1f} plans/s")
    print(f"warm (median of {a.repeats}): {w:.2f} s = {n / w:.1f} plans/s   (target >= 100 plans/s)")
    fam: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])
    for c, dt, fast in rows:
        fam[c.family][0] += 1
        fam[c.family][1] += dt
        fam[c.family][2] += not fast
    print(f"\n{'family':14s} {'plans':>5s} {'ms/plan':>8s} {'whole-round clock':>18s}")
    for name, (k, dt, slow) in fam.items():
        print(f"{name:14s} {k:5d} {dt / k * 1e3:8.1f} {slow:>18d}")
    if a.check:
        check(scn, planner, cands, a.check)


if __name__ == "__main__":
    main()
