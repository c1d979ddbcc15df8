"""Soak: many rounds of digits-star (fl and fpl), a checkpoint after every round, the failure model on.

    python benchmarks/soak.py [ROUNDS] [EARLY]     # default 2000 rounds, measured at round 100 and the last

Prints, per strategy, the resident memory (RSS), open files and threads of this process at
round EARLY and at the last round, their growth (the issue asks under 5 %), and whether
rounds.csv holds every round exactly once.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from flexpl.io.results import RunWriter
from flexpl.studies.run_one import run_one

FAILURES = ["failures.dropout=0.1", "failures.link_outage=0.05", "failures.transfer_loss=0.05"]


def _usage() -> tuple[int, int, int]:
    """(RSS bytes, open file descriptors, threads) of this process."""
    rss = threads = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, len(os.listdir("/proc/self/fd")), max(threads, threading.active_count())


def soak(strategy: str, rounds: int, early: int, out: Path) -> dict[str, object]:
    """Run ``rounds`` rounds of ``strategy``; return the usage at ``early`` and at the end, and the row check."""
    samples: dict[int, tuple[int, int, int]] = {}
    real = RunWriter.round

    def measured(self: RunWriter, row: dict) -> None:
        real(self, row)
        if row["round"] in (early, rounds):
            samples[row["round"]] = _usage()

    RunWriter.round = measured  # type: ignore[method-assign]
    t = time.time()
    try:
        run_one("digits-star", [f"training.rounds={rounds}", "training.max_steps_per_round=1", *FAILURES],
                strategy, 0, out, quiet=True, show_data=False)
    finally:
        RunWriter.round = real  # type: ignore[method-assign]
    with open(out / "rounds.csv") as f:
        got = [int(r["round"]) for r in csv.DictReader(f)]
    return {"samples": samples, "rows_once": got == list(range(1, rounds + 1)), "wall_s": time.time() - t}


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    early = int(sys.argv[2]) if len(sys.argv) > 2 else min(100, rounds)
    print(f"soak: digits-star, {rounds} rounds, checkpoint every round, failures {' '.join(FAILURES)}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'strategy':8s} {'metric':10s} {'round ' + str(early):>14s} {'round ' + str(rounds):>14s} {'growth':>8s}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("fl", "fpl"):
            r = soak(strategy, rounds, early, Path(tmp) / strategy)
            a, b = r["samples"][early], r["samples"][rounds]  # type: ignore[index]
            for i, name in enumerate(("rss_bytes", "open_files", "threads")):
                growth = (b[i] - a[i]) / a[i] * 100 if a[i] else 0.0
                ok &= growth < 5.0
                print(f"{strategy:8s} {name:10s} {a[i]:14,d} {b[i]:14,d} {growth:7.1f}%")
            ok &= bool(r["rows_once"])
            print(f"{strategy:8s} every row once: {r['rows_once']}; {r['wall_s']:.0f} s")
    print("soak:", "growth under 5 % and every row once" if ok else "FAILED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
