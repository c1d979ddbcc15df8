"""Round wall with checkpoints written in the background (the default) against written on the training thread.

    python benchmarks/checkpoint_async.py [--repeats 2] [--save-only]

Cases: the issue's ``mlp-1000`` (IID, batch 10, 2 rounds; the checkpoint is the global MLP, ~1 MB)
and ``fpl`` on ``edge-fmnist`` (2 rounds; the unsynced fronts survive, so every front's
weights and optimizer state are saved). Each case runs in this process with a checkpoint
every round, alternately with the background writer and with ``writer=None`` (the write
on the training thread, as before), after one warm-up run. Printed per variant: the
median wall of each round (from one ``on_round`` to the next; round 1 from the start of
``run``), the time ``checkpoint.save`` held the training thread, and the run's wall.
``--save-only``: no training; each case's state right after set-up saved 5 times each way
(median): the time on the training thread, and with the writer until the file is written.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

CASES = {
    "mlp-1000 iid b10": ("mlp-1000", ["data.partition.kind=iid", "training.batch_size=10", "training.rounds=2"]),
    "edge-fmnist fpl": ("edge-fmnist", ["strategy=fpl", "training.rounds=2"]),
}


def one(name: str, sets: list[str], background: bool) -> tuple[list[float], float, float]:
    """Round walls, seconds inside checkpoint.save on the training thread, run wall."""
    from flexpl.config.scenario import load_scenario
    from flexpl.sim import checkpoint, simulator

    scn = load_scenario(name, sets)
    st = simulator.setup(scn)
    real_save, real_writer = checkpoint.save, checkpoint.Writer
    held = [0.0]

    def timed_save(*a, **k):
        t = time.perf_counter()
        try:
            return real_save(*a, **k)
        finally:
            held[0] += time.perf_counter() - t

    checkpoint.save = timed_save
    if not background:
        checkpoint.Writer = lambda: None  # run() then saves with writer=None: on the training thread
    marks = [time.perf_counter()]
    try:
        with tempfile.TemporaryDirectory() as d:
            simulator.run(scn, on_round=lambda row: marks.append(time.perf_counter()), st=st,
                          checkpoint_dir=Path(d))
            wall = time.perf_counter() - marks[0]
    finally:
        checkpoint.save, checkpoint.Writer = real_save, real_writer
    return [b - a for a, b in zip(marks, marks[1:])], held[0], wall


def save_only() -> None:
    """Time one save of each case's freshly set-up state, on the training thread and through the writer."""
    from flexpl.config.scenario import load_scenario
    from flexpl.costs.bill import Totals
    from flexpl.sim import checkpoint, simulator

    print("| case | checkpoint MB | on the training thread ms | background: training thread ms | "
          "background: until written ms |")
    print("|---|---|---|---|---|")
    for case, (name, sets) in CASES.items():
        st = simulator.setup(load_scenario(name, sets))
        kw = dict(scenario_sha256="x", round_index=1, rows=[{"round": 1}], totals=Totals.empty(st.topo),
                  last_eval={}, synced=True, eng=st.engine)
        with tempfile.TemporaryDirectory() as d:
            path, writer, sync, bg = Path(d) / "checkpoint.pt", checkpoint.Writer(), [], []
            for _ in range(5):
                t = time.perf_counter()
                checkpoint.save(path, **kw)
                sync.append(time.perf_counter() - t)
                t = time.perf_counter()
                checkpoint.save(path, writer=writer, **kw)
                t1 = time.perf_counter()
                writer.wait()
                bg.append((t1 - t, time.perf_counter() - t))
            mb = path.stat().st_size / 1e6
        print(f"| {case} | {mb:.1f} | {1000 * statistics.median(sync):.1f} | "
              f"{1000 * statistics.median(b[0] for b in bg):.1f} | {1000 * statistics.median(b[1] for b in bg):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--save-only", action="store_true")
    a = ap.parse_args()
    load0 = os.getloadavg()
    if a.save_only:
        save_only()
        print(f"load average before {' '.join(f'{v:.2f}' for v in load0)}, after "
              f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
        return
    print("| case | writer | round walls s (median of repeats) | save on training thread s | run wall s |")
    print("|---|---|---|---|---|")
    for case, (name, sets) in CASES.items():
        one(name, sets, True)  # warm-up: data cache, allocator
        res: dict[bool, list] = {True: [], False: []}
        for r in range(a.repeats):
            for bg in ((True, False) if r % 2 == 0 else (False, True)):
                res[bg].append(one(name, sets, bg))
        for bg in (False, True):
            rounds = [statistics.median(x[0][i] for x in res[bg]) for i in range(len(res[bg][0][0]))]
            print(f"| {case} | {'background' if bg else 'training thread'} | "
                  f"{' / '.join(f'{x:.3f}' for x in rounds)} | {statistics.median(x[1] for x in res[bg]):.3f} | "
                  f"{statistics.median(x[2] for x in res[bg]):.2f} |", flush=True)
    print(f"load average before {' '.join(f'{v:.2f}' for v in load0)}, after "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
