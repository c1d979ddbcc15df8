"""Seconds per round on whatever device is here: fog-cifar (full-width ResNet-18 on the Fashion-MNIST
3x32x32 fallback where CIFAR-10 is absent), cnn-100 and mlp-1000, one FedAvg round each, per executor,
side by side; ``resnet18-100`` (not in the default cases) is the full-width ResNet-18 over cnn-100's
100 clients. ``benchmarks/gpu_device.sh`` runs them all on a GPU machine.

    PYTHONPATH=src python benchmarks/gpu.py [--device auto|cpu|cuda|cuda:N] [--max-train N]
        [--cases fog-cifar,cnn-100,mlp-1000,resnet18-100] [--executors sequential,processes,ray]
        [--precision fp32|bf16]


Prints the device, then per case and executor: seconds for a round (training only: the test
evaluation is off; two rounds are run and the second is timed, so that one-time costs such as
forking workers or starting Ray actors are shown apart, as ``first``), samples trained, seconds
per 1,000 samples, and the round's FLOPs and bytes (which must not depend on the device or the
executor). ``processes`` runs on the CPU in fp32 only and is skipped elsewhere; ``ray`` starts a
local Ray with ``--workers`` actors (``engine.executor: ray``, FedAvg clients only).
"""

from __future__ import annotations

import argparse
import time

import torch

from flexpl.api import load_scenario
from flexpl.errors import UserError
from flexpl.sim.device import resolve_device
from flexpl.sim.simulator import run, setup

CASES = {  # case -> its scenario and overrides for one timed round
    "fog-cifar": ("fog-cifar", ["strategy=fl"]),
    "cnn-100": ("cnn-100", ["strategy=fl"]),
    "mlp-1000": ("mlp-1000", ["strategy=fl"]),
    # the full-width ResNet-18 (CIFAR stem) over cnn-100's 100 clients, on Fashion-MNIST at 3x32x32
    "resnet18-100": ("cnn-100", ["strategy=fl", "model=resnet18", "data.transform.resize=32",
                                 "data.transform.channels=3"]),
}
DEFAULT_CASES = "fog-cifar,cnn-100,mlp-1000"


def one(case: str, executor: str, a: argparse.Namespace) -> str:
    """One round of ``case`` on ``executor``: the printed row."""
    scenario, case_sets = CASES[case]
    if a.offline and scenario == "fog-cifar":  # its data.fallback, without trying the download first
        case_sets = [*case_sets, "data.dataset=fashion-mnist", "data.transform.resize=32", "data.transform.channels=3"]
    sets = [*case_sets, "training.rounds=2", "training.eval_test=false", "training.checkpoint_every=0",
            f"data.max_train={a.max_train}", f"engine.executor={executor}", f"engine.device={a.device}",
            f"training.precision={a.precision}"] + ([f"engine.workers={a.workers}"] if executor != "sequential" else [])
    try:
        scn = load_scenario(scenario, overrides=sets)
        st = setup(scn)
    except UserError as exc:
        return f"{case:10} {executor:10} skipped: {exc}"
    samples = int(sum(len(n) for n in st.nodes) * scn.training.clients_per_round * scn.training.local_epochs)
    ends = [time.perf_counter()]

    def at_end(_row: dict) -> None:
        if st.engine.device.type == "cuda":
            torch.cuda.synchronize()
        ends.append(time.perf_counter())
    try:
        res = run(scn, on_round=at_end, st=st)
    except UserError as exc:
        return f"{case:10} {executor:10} skipped: {exc}"
    first, dt = ends[1] - ends[0], ends[2] - ends[1]
    row = res.rounds[1]
    flops, nbytes = row["flops"] - res.rounds[0]["flops"], row["bytes"] - res.rounds[0]["bytes"]
    return (f"{case:10} {st.executor.mode:10} {dt:>9.2f} {first:>7.2f} {samples:>8} {1000 * dt / max(samples, 1):>10.3f} "
            f"{flops:>14.4g} {nbytes:>12.4g}  ({st.data.name})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--max-train", type=int, default=2000, help="training samples in all (default 2000)")
    ap.add_argument("--cases", default=DEFAULT_CASES, help=f"of {', '.join(CASES)} (default {DEFAULT_CASES})")
    ap.add_argument("--executors", default="sequential,processes,ray")
    ap.add_argument("--workers", type=int, default=2, help="processes / Ray actors (default 2)")
    ap.add_argument("--offline", action="store_true",
                    help="fog-cifar on its Fashion-MNIST 3x32x32 fallback without trying CIFAR-10's download")
    a = ap.parse_args()
    try:
        dev = resolve_device(a.device)
    except UserError as exc:
        raise SystemExit(f"gpu.py: {exc}") from None
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {dev} ({name}); precision {a.precision}; max_train {a.max_train}; torch {torch.__version__}")
    print(f"{'case':10} {'executor':10} {'s/round':>9} {'first':>7} {'samples':>8} {'s/1k samp':>10} {'flops':>14} "
          f"{'bytes':>12}")
    for case in a.cases.split(","):
        for executor in a.executors.split(","):
            print(one(case, executor, a), flush=True)


if __name__ == "__main__":
    main()
