"""Time one test-set evaluation of a scenario's paths: one path after the other (as before) against
the shared, stacked evaluation (flexpl.sim.evaluate.forward_paths), per chunk size, side by side.

    PYTHONPATH=src python benchmarks/eval_chunk.py [SCENARIO] [--strategies fpl,mp,fl] [--chunks 2000,512,256,128]
        [--test N] [--set KEY=VALUE ...]

Prints seconds per evaluation and the accuracies (which must agree between the two ways).
"""

from __future__ import annotations

import argparse
import time

import torch

from flexpl.api import load_scenario
from flexpl.sim.simulator import setup


def one_by_one(eng, x: torch.Tensor, y: torch.Tensor, w: dict[str, float], chunk: int) -> float:
    """The old evaluation loop: every path on every chunk, one after the other; returns the mean accuracy."""
    layout = eng.layout
    paths, node_path = {}, {}
    for n in w:
        mods = tuple(eng.eval_module(s, layout.serves[s][n]) for s in range(len(eng.plan.stages)))
        paths.setdefault(tuple(id(m) for m in mods), mods)
        node_path[n] = tuple(id(m) for m in mods)
    for mods in paths.values():
        for m in mods:
            m.eval()
    logits = {k: [] for k in paths}
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            for k, mods in paths.items():
                h = x[i:i + chunk]
                for m in mods:
                    h = m(h)
                logits[k].append(h)
    acc = {k: float((torch.cat(v).argmax(1) == y).float().mean()) for k, v in logits.items()}
    return sum(acc[node_path[n]] * v for n, v in w.items()) / sum(w.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", nargs="?", default="edge-fmnist")
    ap.add_argument("--strategies", default="fpl,mp,fl")
    ap.add_argument("--chunks", default="2000,512,256,128")
    ap.add_argument("--test", type=int, default=2000, help="test samples evaluated (default 2000)")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}; {a.scenario}, first {a.test} test samples")
    print(f"{'strategy':8} {'chunk':>6} {'paths':>5} {'one_by_one_s':>12} {'shared_s':>9} {'acc_old':>8} {'acc_new':>8}")
    for strategy in a.strategies.split(","):
        scn = load_scenario(a.scenario, overrides=[f"strategy={strategy}", "data.max_train=1000", *a.set])
        st = setup(scn)
        x, y = st.data.test_x[:a.test], st.data.test_y[:a.test]
        w = {n.name: float(len(n)) for n in st.nodes}
        for chunk in (int(c) for c in a.chunks.split(",")):
            t = time.perf_counter()
            old = one_by_one(st.engine, x, y, w, chunk)
            t_old = time.perf_counter() - t
            t = time.perf_counter()
            ev = st.engine.evaluate(x, y, w, chunk=chunk)
            t_new = time.perf_counter() - t
            print(f"{strategy:8} {chunk:>6} {ev['paths']:>5} {t_old:>12.2f} {t_new:>9.2f} {old:>8.4f} {ev['accuracy']:>8.4f}")


if __name__ == "__main__":
    main()
