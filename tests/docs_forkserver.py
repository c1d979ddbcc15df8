"""A fork server for tests/test_docs_examples.py: every docs command forked from one warm process.

Run as ``python tests/docs_forkserver.py`` (the test starts it). It imports the whole package,
trains digits-star for two steps, predicts one plan and draws one figure, so that each command
starts with the data loaded and torch's first-call costs paid. Then, for every JSON line
``{"argv": [...], "cwd": "...", "log": "..."}`` on stdin, it forks a child that runs
``flexpl ARGV`` in ``cwd`` (stdout and stderr to ``log``), and answers two JSON lines on
stdout: ``{"pid": N}`` when the child starts (the test kills it on a timeout) and
``{"rc": R}`` when it ends. A private server, not multiprocessing's: the distributed backend
keeps its own fork server, and the two never meet.

Nothing in the warm-up starts a thread a forked child would inherit half-alive: one torch
thread, the sequential executor, no checkpoint (its writer is a thread).
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path


def preload() -> None:
    """Import every module of the package, then warm up (see the module docstring)."""
    import torch

    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 flexpl ...: the 2-core test machines are shared
    import matplotlib

    matplotlib.use("Agg")
    import importlib

    import matplotlib.pyplot as plt

    import flexpl

    src = Path(flexpl.__file__).parent
    for p in sorted(src.rglob("*.py")):
        parts = list(p.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        try:
            importlib.import_module(".".join(parts))
        except Exception:  # an optional extra missing: the command that needs it says so itself
            pass
    try:
        sets = {"training.rounds": 1, "training.max_steps_per_round": 2, "training.checkpoint_every": 0,
                "engine.executor": "sequential"}
        for strategy in ("fl", "fpl"):
            scn = flexpl.load_scenario("digits-star", overrides=sets, strategy=strategy)
            flexpl.simulate(scn)
            flexpl.predict(scn)
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1], label="warm-up")
        ax.legend()
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)
    except Exception:  # a warm-up only: the commands themselves report what is wrong
        pass


def child(req: dict) -> None:
    """The forked child: one ``flexpl`` command; never returns."""
    rc = 1
    try:
        os.chdir(req["cwd"])
        sys.path.insert(0, req["cwd"])  # a scenario may name user code in this folder by import path
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.argv = ["flexpl", *req["argv"]]
        from flexpl.cli import main

        try:
            rc = int(main(req["argv"]) or 0)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            rc = 1
        from multiprocessing import util

        util._exit_function()  # what a multiprocessing child does on its way out: join its own children
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def serve() -> None:
    preload()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(req)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
