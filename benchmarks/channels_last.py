"""Channels-last against the default (contiguous) memory format on this CPU, per convolutional model.

One SGD step (forward, cross-entropy, backward, update) on a batch of ``--batch`` images and one
evaluation forward on ``--eval-batch`` images, for each model: the zoo's ``cnn`` and ``lenet5`` on
Fashion-MNIST's 1x28x28 and ``resnet18`` (full width) on the 3x32x32 fallback. Both formats are timed
alternately in the same process (medians of ``--repeats``, after a warm-up), on ``--threads`` torch
threads, and the ratio contiguous / channels-last is printed (above 1: channels-last is faster).

FlexPL trains in the default format unless ``engine.train_memory_format: channels_last``: this
script is how to check, on a given machine and model, whether that would pay (issue 26 quotes
1.14x on the CNN step of another machine). ``--runs`` times whole FlexPL runs instead: edge-fmnist's
fl and fpl (the CNN, ``engine.executor: auto``), training only (the test evaluation off), one
format after the other ``--repeats`` times, and checks that both formats bill the same.

    python benchmarks/channels_last.py [--threads 1] [--repeats 15]
    python benchmarks/channels_last.py --runs [--repeats 2] [--rounds 1] [--max-train 4000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from flexpl.models import build_model

CASES = [("cnn", (1, 28, 28)), ("lenet5", (1, 28, 28)), ("resnet18", (3, 32, 32))]


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _bench(name: str, shape: tuple[int, ...], batch: int, eval_batch: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    base = build_model(name, shape, 10, seed=0)
    out: dict[str, float] = {}
    models = {}
    for fmt in ("contiguous", "channels_last"):
        m = build_model(name, shape, 10, seed=0)
        m.load_state_dict(base.state_dict())
        if fmt == "channels_last":
            m = m.to(memory_format=torch.channels_last)
        models[fmt] = (m, torch.optim.SGD(m.parameters(), lr=0.01))
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    xe = torch.randn(eval_batch, *shape)
    loss_fn = nn.CrossEntropyLoss()

    def step(fmt: str):
        m, opt = models[fmt]
        xb = x.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x

        def run() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(m(xb), y).backward()
            opt.step()
        return run

    def evaluate(fmt: str):
        m, _ = models[fmt]
        xb = xe.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else xe

        def run() -> None:
            with torch.no_grad():
                m(xb)
        return run

    for fmt in models:  # warm-up: oneDNN primitives and allocator
        step(fmt)()
        evaluate(fmt)()
    # alternate the formats so that a load change hits both alike
    for what, make in (("step", step), ("eval", evaluate)):
        t = {fmt: [] for fmt in models}
        for _ in range(repeats):
            for fmt in models:
                t[fmt].append(_timed(make(fmt), 1))
        for fmt in models:
            out[f"{what}_{fmt}"] = statistics.median(t[fmt])
    return out


def _runs(repeats: int, rounds: int, max_train: int) -> None:
    """Whole runs, contiguous against channels-last training: seconds of wall (median) and the bill."""
    from flexpl.api import load_scenario
    from flexpl.sim.simulator import run, setup

    print(f"edge-fmnist, {rounds} round(s), {max_train} training samples, no test evaluation; "
          f"median of {repeats}; torch threads {torch.get_num_threads()}")
    print(f"{'strategy':<9} {'executor':<11} {'wall s (contig)':>16} {'wall s (CL)':>12} {'ratio':>6}  same bill")
    for strategy in ("fl", "fpl"):
        walls: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
        bills: dict[str, tuple] = {}
        executor = ""
        for _ in range(repeats):
            for fmt in walls:
                sets = [f"strategy={strategy}", f"training.rounds={rounds}", f"data.max_train={max_train}",
                        "training.eval_test=false", "training.checkpoint_every=0",
                        f"engine.train_memory_format={fmt}"]
                scn = load_scenario("edge-fmnist", overrides=sets)
                st = setup(scn)
                t = time.perf_counter()
                res = run(scn, st=st)
                walls[fmt].append(time.perf_counter() - t)
                executor = res.summary["executor"]
                bills[fmt] = tuple(res.summary[k] for k in ("flops_total", "bytes_total", "sim_time_s",
                                                             "energy_j_total"))
        c, cl = statistics.median(walls["contiguous"]), statistics.median(walls["channels_last"])
        print(f"{strategy:<9} {executor:<11} {c:>16.2f} {cl:>12.2f} {c / cl:>6.2f}  "
              f"{bills['contiguous'] == bills['channels_last']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eval-batch", type=int, default=256)
    ap.add_argument("--runs", action="store_true", help="time whole edge-fmnist runs (fl, fpl) instead")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--max-train", type=int, default=4000)
    args = ap.parse_args()
    if args.runs:  # (the runs choose their own threads and workers, as flexpl run does)
        _runs(args.repeats, args.rounds, args.max_train)
        return
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.threads} thread(s), batch {args.batch} (step) and {args.eval_batch} (eval), "
          f"median of {args.repeats}")
    print(f"{'model':<10} {'step ms (contig)':>17} {'step ms (CL)':>13} {'ratio':>6} "
          f"{'eval ms (contig)':>17} {'eval ms (CL)':>13} {'ratio':>6}")
    for name, shape in CASES:
        r = _bench(name, shape, args.batch, args.eval_batch, args.repeats)
        sc, sl = r["step_contiguous"] * 1e3, r["step_channels_last"] * 1e3
        ec, el = r["eval_contiguous"] * 1e3, r["eval_channels_last"] * 1e3
        print(f"{name:<10} {sc:>17.2f} {sl:>13.2f} {sc / sl:>6.2f} {ec:>17.2f} {el:>13.2f} {ec / el:>6.2f}")


if __name__ == "__main__":
    main()
