"""Peak memory of a Ray actor of ``engine.executor: ray`` with 10 and with 1,000 clients a round.

One FedAvg run per client count on a local Ray (``--workers`` actors of one CPU each), a tiny
MLP on 4 synthetic samples per client, ``--rounds`` rounds; after the run each actor reports
its peak resident memory (``VmHWM``). An actor holds one working model per stage plus its
data and trains its clients in place, so the peak should not grow with the clients a round
(the data grows with the clients here: 4 samples of 16 floats each, 64 KiB per 1,000).
Prints the peaks, their difference, the wall time and the 1-minute load average.

    python benchmarks/ray_memory.py [--clients 10,1000] [--workers 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import time

from flexpl.config.scenario import validate_scenario
from flexpl.sim import simulator
from flexpl.sim.exec import ray_pool


def scenario(clients: int, rounds: int, workers: int) -> dict:
    """FedAvg over ``clients`` devices of a Wi-Fi star, a tiny MLP on 4 synthetic 1x4x4 samples each."""
    return {
        "name": "ray-memory", "seed": 0,
        "data": {"dataset": "synthetic", "shape": [1, 4, 4], "classes": 4, "train": 4 * clients, "test": 64,
                 "partition": {"kind": "iid"}},
        "model": {"name": "mlp", "hidden": [32]},
        "training": {"rounds": rounds, "batch_size": 4, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "engine": {"executor": "ray", "workers": workers},
        "nodes": [{"name": "server", "profile": "edge-server"}]
        + [{"name": f"dev{i}", "profile": "rpi4", "holds_data": True} for i in range(clients)],
        "links": [{"between": [f"dev{i}", "server"], "profile": "wifi"} for i in range(clients)],
        "strategy": "fl",
    }


def main() -> None:
    """One run per client count; print each actor's peak memory."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", default="10,1000")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    peaks: dict[int, list[int]] = {}
    close = ray_pool.RayPool.close

    def keep_peaks(pool: ray_pool.RayPool) -> None:  # read the actors' peaks before they are stopped
        if pool.actors:
            peaks[n] = pool.peak_rss_bytes()
        close(pool)

    ray_pool.RayPool.close = keep_peaks  # type: ignore[method-assign]
    print(f"{'clients':>8} {'actor peak MiB':>20} {'wall s':>8} {'load 1m':>8}")
    for n in [int(c) for c in args.clients.split(",")]:
        scn = validate_scenario(scenario(n, args.rounds, args.workers))
        t = time.perf_counter()
        simulator.run(scn)
        wall = time.perf_counter() - t
        mib = ", ".join(f"{b / 2**20:.1f}" for b in peaks[n])
        print(f"{n:>8} {mib:>20} {wall:>8.1f} {os.getloadavg()[0]:>8.2f}")
    first, last = peaks[min(peaks)], peaks[max(peaks)]
    print(f"growth from {min(peaks)} to {max(peaks)} clients a round: "
          + ", ".join(f"{(b - a) / 2**20:+.1f} MiB" for a, b in zip(first, last)))


if __name__ == "__main__":
    main()
