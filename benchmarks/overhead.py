"""Simulator overhead: one simulated FedAvg round (10 clients x 1 local epoch) vs plain centralized training.

Both sides train the same model on the same samples with the same batch size, in this
process, one after the other, repeated; prints median wall times and their ratio
(target <= 1.10). Centralized is a plain PyTorch loop: the floor the simulator must approach.

    python benchmarks/overhead.py [--model cnn] [--samples 60000] [--clients 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from flexpl.config.scenario import validate_scenario
from flexpl.data import load_dataset
from flexpl.models import build_model
from flexpl.sim.replica import make_optimizer
from flexpl.sim.simulator import run, setup


def scenario(model: str, samples: int, clients: int, dataset: str) -> dict:
    """FedAvg over ``clients`` devices on one Wi-Fi star, IID, 1 round x 1 local epoch."""
    return {
        "name": "overhead", "seed": 0,
        "data": {"dataset": dataset, "partition": {"kind": "iid"}, "max_train": samples, "max_test": 1000},
        "model": model, "training": {"rounds": 1, "local_epochs": 1, "batch_size": 32,
                                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "nodes": [{"name": "server", "profile": "edge-server"}]
        + [{"name": f"dev{i}", "profile": "rpi4", "holds_data": True} for i in range(clients)],
        "links": [{"between": [f"dev{i}", "server"], "profile": "wifi"} for i in range(clients)],
        "strategy": "fl",
    }


def centralized_epoch(model_name: str, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int = 0) -> float:
    """Wall time of one plain epoch over ``x`` (shuffled), same optimizer, same batch size."""
    scn = validate_scenario(scenario(model_name, len(y), 1, "digits"))
    model = build_model(model_name, tuple(x.shape[1:]), 10, seed=seed)
    opt = make_optimizer(model, scn.training.optimizer)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    t = time.perf_counter()
    for idx in perm.split(batch):
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def main() -> None:
    """Run both sides ``--repeats`` times and print medians and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--samples", type=int, default=60000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    scn = validate_scenario(scenario(a.model, a.samples, a.clients, a.dataset))
    data = load_dataset(a.dataset, max_train=a.samples, max_test=1000)
    sim, cen = [], []
    for _ in range(a.repeats):
        st = setup(scn)
        t = time.perf_counter()
        res = run(scn, st=st)
        sim.append(time.perf_counter() - t)
        cen.append(centralized_epoch(a.model, data.train_x, data.train_y, 32))
    s, c = statistics.median(sim), statistics.median(cen)
    print(f"model {a.model}, {a.samples} samples, {a.clients} clients, batch 32, torch threads {torch.get_num_threads()}")
    print(f"simulated FedAvg round (incl. evaluation on 1000 test samples): median {s:.2f} s  runs {[round(v, 2) for v in sim]}")
    print(f"centralized epoch (plain loop):                              median {c:.2f} s  runs {[round(v, 2) for v in cen]}")
    print(f"ratio simulated / centralized: {s / c:.3f}   (target <= 1.10)")
    print(f"simulated accuracy after the round: {res.summary['final_accuracy']:.4f}")


if __name__ == "__main__":
    main()
