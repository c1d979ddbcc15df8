"""How far the vectorized executor drifts from the sequential one, per CPU kernel path.

The table of issue 23: digits-star fl (the equivalence tests' settings), sequential against
vectorized, the largest absolute weight difference after 1 round x 1 epoch, 1 round x 2 epochs and
3 rounds x 2 epochs, and the train losses per round, under each ATEN_CPU_CAPABILITY given (each in
its own process: the capability is read once, when torch loads), on one torch thread as in the tests.

    python benchmarks/kernel_paths.py [--caps default avx2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import copy, json, sys, torch, yaml
torch.set_num_threads(int(sys.argv[1]))  # the tests run on one thread (tests/conftest.py)
from importlib import resources
from flexpl.config.scenario import apply_set, validate_scenario
from flexpl.sim.engine import path_state
from flexpl.sim.simulator import run, setup

def scenario(sets):
    data = yaml.safe_load(resources.files("flexpl.scenarios").joinpath("digits-star.yaml").read_text())
    for s in sets:
        apply_set(data, s)
    return validate_scenario(data)

out = {"capability": torch.backends.cpu.get_cpu_capability(), "cases": {}}
for rounds, epochs in ((1, 1), (1, 2), (3, 2)):
    res = {}
    for mode in ("sequential", "vectorized"):
        scn = scenario(["strategy=fl", f"engine.executor={mode}", f"training.rounds={rounds}",
                        f"training.local_epochs={epochs}"])
        st = setup(scn)
        r = run(scn, st=st)
        res[mode] = ({n: path_state(st.engine, n) for n in scn.data_nodes}, [x["train_loss"] for x in r.rounds])
    (a, la), (b, lb) = res["sequential"], res["vectorized"]
    diff = max(float((a[n][k] - b[n][k]).abs().max()) for n in a for k in a[n])
    out["cases"][f"{rounds}x{epochs}"] = {"max_abs_diff": diff, "loss_sequential": la, "loss_vectorized": lb}
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caps", nargs="+", default=["default", "avx2"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the tests use 1)")
    args = ap.parse_args()
    print(f"{'capability':<12} {'1 round, 1 epoch':>17} {'1 round, 2 epochs':>18} {'3 rounds x 2 epochs':>20}")
    for cap in args.caps:
        env = {**os.environ, "ATEN_CPU_CAPABILITY": cap}
        p = subprocess.run([sys.executable, "-c", CHILD, str(args.threads)], env=env, capture_output=True, text=True, check=True)
        got = json.loads(p.stdout.strip().splitlines()[-1])
        c = got["cases"]
        print(f"{got['capability']:<12} {c['1x1']['max_abs_diff']:>17.2e} {c['1x2']['max_abs_diff']:>18.2e} "
              f"{c['3x2']['max_abs_diff']:>20.2e}")
        for mode in ("sequential", "vectorized"):
            print(f"  {mode:<10} train losses (3x2): " + ", ".join(f"{v:.8f}" for v in c["3x2"][f"loss_{mode}"]))


if __name__ == "__main__":
    main()
