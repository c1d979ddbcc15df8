"""Simulator speed: one simulated round against one plain centralized epoch over the same samples.

For FedAvg (``fl``) and FPL (``fpl``), with the CNN on 10 and 100 clients and the MLP on
100 and 1,000 clients (Fashion-MNIST, IID for the CNN, Dirichlet 0.5 for the MLP, as in
the built-in ``cnn-100`` and ``mlp-1000`` scenarios), it times one simulated round of one
local epoch (training, syncs and cost accounting; the test-set evaluation is left out, as
the centralized side has none) and one centralized epoch of a plain PyTorch loop over the
same samples with the same batch size and optimizer, side by side in this process,
``--repeats`` times, and prints medians and ratios, for the first round (which also pays
one-time costs) and for the later rounds of a ``--rounds`` run. The engine picks its execution mode
itself (``engine.executor: auto``); the table says which. Targets: ratio <= 0.95 for the
CNN cases, <= 0.5 for the MLP cases.

The centralized floor is timed twice per repeat: with torch's default thread count (what
a plain script gets) and with one thread; ``ratio`` divides by the default-threads time,
``ratio_best`` by the faster of the two (the stricter floor).

    python benchmarks/simulator.py [--samples 60000] [--repeats 3] [--cases fl-cnn-10,...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import overhead  # the plain centralized loop, shared with benchmarks/overhead.py
import torch

from flexpl.config import load_scenario
from flexpl.data import Dataset, load_dataset
from flexpl.engine.executor import threads as threads_ctx
from flexpl.engine.simulator import run, setup

CASES = ["fl-cnn-10", "fpl-cnn-10", "fl-cnn-100", "fpl-cnn-100",
         "fl-mlp-100", "fpl-mlp-100", "fl-mlp-1000", "fpl-mlp-1000"]
TARGET = {"cnn": 0.95, "mlp": 0.5}


def case_sets(case: str) -> tuple[str, str, list[str]]:
    """Scenario name, model and ``--set`` items of a case such as ``fpl-mlp-100``."""
    strategy, model, clients = case.split("-")
    n = int(clients)
    base = "cnn-100" if model == "cnn" else "mlp-1000"
    sets = [f"strategy={strategy}", "training.rounds=1"]
    if base == "cnn-100" and n != 100:
        sets.append(f"nodes.1.count={n}")
        sets.append(f"links.0.count={n}")
    if base == "mlp-1000" and n != 1000:
        sets.append(f"nodes.1.count={n}")
        sets.append(f"links.0.count={n}")
    return base, model, sets


def centralized_epoch(model_name: str, data: Dataset, batch: int, threads: int, seed: int = 0) -> float:
    """Wall time of one plain epoch over every training sample (benchmarks/overhead.py's loop) on ``threads``."""
    with threads_ctx(threads):
        return overhead.centralized_epoch(model_name, data.train_x, data.train_y, batch, seed)


def simulated_rounds(case: str, data: Dataset, rounds: int) -> tuple[list[float], str, float]:
    """Wall time of each simulated round of ``case`` (set-up excluded), the mode used, and set-up time.

    The first round also pays one-time costs: forking worker processes, their first touch
    of the shared weights, and counting FLOPs of each new batch shape.
    """
    base, _, sets = case_sets(case)
    scn = load_scenario(base, [*sets, f"training.rounds={rounds}"])
    t = time.perf_counter()
    st = setup(scn, dataset=data)
    t_setup = time.perf_counter() - t
    marks = [time.perf_counter()]
    run(scn, st=st, evaluate=lambda _st: {}, on_round=lambda _row: marks.append(time.perf_counter()))
    return [b - a for a, b in zip(marks, marks[1:])], st.executor.mode, t_setup


def main() -> None:
    """Run every case and both centralized floors ``--repeats`` times; print medians and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=60000, help="training samples (the full 60k by default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--rounds", type=int, default=2, help="rounds per run: the first, and the steady state after it")
    a = ap.parse_args()
    cases = a.cases.split(",")
    data = load_dataset("fashion-mnist", max_train=a.samples, max_test=100)
    threads = torch.get_num_threads()
    sim: dict[str, list[float]] = {c: [] for c in cases}
    later: dict[str, list[float]] = {c: [] for c in cases}
    setups: dict[str, list[float]] = {c: [] for c in cases}
    modes: dict[str, str] = {}
    cen: dict[tuple[str, int], list[float]] = {}
    models = sorted({case_sets(c)[1] for c in cases})
    load0 = os.getloadavg()
    for rep in range(a.repeats):
        for m in models:
            for th in sorted({threads, 1}):
                cen.setdefault((m, th), []).append(centralized_epoch(m, data, 32, th))
        for c in cases:
            walls, mode, t_setup = simulated_rounds(c, data, a.rounds)
            sim[c].append(walls[0])
            if len(walls) > 1:
                later[c].append(statistics.median(walls[1:]))
            setups[c].append(t_setup)
            modes[c] = mode
            print(f"  repeat {rep + 1}: {c:13s} rounds {[round(w, 2) for w in walls]} s ({mode})", flush=True)
    load1 = os.getloadavg()
    print(f"\n{len(data.train_y)} samples, batch 32, 1 local epoch, SGD lr 0.05 momentum 0.9; torch default threads "
          f"{threads}; {a.repeats} repeats; load average before {load0[0]:.2f}, after {load1[0]:.2f} "
          f"on {os.cpu_count()} cores")
    for (m, th), v in sorted(cen.items()):
        print(f"centralized {m} epoch, {th} thread(s): median {statistics.median(v):.2f} s  runs "
              f"{[round(x, 2) for x in v]}")
    print("\nround 1 pays the one-time costs (forks, first touch of shared memory, FLOP counts of new shapes); "
          "round 2+ is the median of the later rounds")
    print("\n| case | mode | round 1 s (median) | round 1 runs | round 2+ s (median) | centralized s | "
          "ratio round 1 | ratio round 2+ | ratio round 2+ vs best floor | target |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        m = case_sets(c)[1]
        s = statistics.median(sim[c])
        s2 = statistics.median(later[c]) if later[c] else float("nan")
        c_def = statistics.median(cen[(m, threads)])
        c_best = min(statistics.median(cen[(m, th)]) for th in sorted({threads, 1}))
        ok = "met" if s / c_def <= TARGET[m] else ("met from round 2" if s2 / c_def <= TARGET[m] else "NOT met")
        print(f"| {c} | {modes[c]} | {s:.2f} | {[round(x, 2) for x in sim[c]]} | {s2:.2f} | {c_def:.2f} | "
              f"{s / c_def:.3f} | {s2 / c_def:.3f} | {s2 / c_best:.3f} | <= {TARGET[m]} ({ok}) |")
    print("\nset-up (not in the round time), median s: "
          + ", ".join(f"{c} {statistics.median(setups[c]):.2f}" for c in cases))


if __name__ == "__main__":
    main()
