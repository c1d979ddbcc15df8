"""The crossover the seed is about: FL vs split plans as the model grows, at fixed data per device.

For each model, the fog topology of ``fog-imagenet`` (20 mixed devices, 4 edge servers, a
cloud) with ``--samples`` synthetic samples per device (IID), one round, batch 32, SGD with
momentum; fl, mp at the model's default cut, and sfl and fpl at every cut that leaves the
devices some blocks (cut >= 1; a ``*`` marks the model's default cut): the predicted bytes per round,
device energy per round and largest device peak memory, from ``flexpl plan``'s predictor
(no training). cnn and resnet18 see 3x32x32 images with 10 classes, resnet50 and vgg16
3x224x224 with 1000.

    python benchmarks/crossover.py [--samples 500] [--models cnn,resnet18,resnet50,vgg16]
"""

from __future__ import annotations

import argparse
import time

from flexpl.config.scenario import load_scenario
from flexpl.models import DEFAULT_CUTS
from flexpl.planner import Candidate, Planner

SHAPES = {"cnn": ([3, 32, 32], 10), "resnet18": ([3, 32, 32], 10), "resnet50": ([3, 224, 224], 1000),
          "vgg16": ([3, 224, 224], 1000)}


def main() -> None:
    """Print one row per (model, strategy, cut)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--models", default="cnn,resnet18,resnet50,vgg16")
    ap.add_argument("--strategies", default="fl,sfl,fpl,mp")
    a = ap.parse_args()
    print(f"{'model':9} {'strategy':8} {'cut':>3} {'bytes/round':>12} {'dev J/round':>12} {'dev peak B':>12} "
          f"{'fits':>5} {'s':>5}")
    for model in a.models.split(","):
        shape, classes = SHAPES[model]
        scn = load_scenario("fog-imagenet", [f"model={model}", f"data.shape={shape}", f"data.classes={classes}",
                                             f"data.train={20 * a.samples}", "data.test=100",
                                             "training.batch_size=32"], None, None)
        planner = Planner(scn)
        for strategy in a.strategies.split(","):
            cuts = range(1, planner.n_blocks) if strategy in ("sfl", "fpl") else [DEFAULT_CUTS[model]]
            for cut in cuts:
                _row(model, strategy, cut, planner)


def _row(model: str, strategy: str, cut: int, planner: Planner) -> None:
    t0 = time.perf_counter()
    plan = {"cut": cut} if strategy != "fl" else None
    row = planner.predict(Candidate(strategy, strategy, plan, strategy)).row
    where = "  -" if strategy == "fl" else f"{cut:>2}" + ("*" if cut == DEFAULT_CUTS[model] else " ")
    print(f"{model:9} {strategy:8} {where} {row['bytes_per_round']:12.4e} "
          f"{row['device_energy_j_per_round']:12.4e} {row['peak_memory_device_max']:12.4e} "
          f"{str(row['device_memory_fits']):>5} {time.perf_counter() - t0:5.1f}", flush=True)


if __name__ == "__main__":
    main()
