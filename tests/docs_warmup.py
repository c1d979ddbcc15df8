"""Warm-up of the docs examples' fork server (tests/test_docs_examples.py), done on import.

The server imports the package and then, here, trains digits-star for two steps, predicts one
plan and draws one figure, so that every command forked from it starts with the data loaded and
torch's first-call costs paid. Nothing here starts a thread that a forked child would inherit
half-alive: one torch thread, the sequential executor, no checkpoint (its writer is a thread).
"""

from __future__ import annotations

import io

import torch

torch.set_num_threads(1)


def _warm() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import flexpl

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


try:
    _warm()
except Exception:  # a warm-up only: the commands themselves report what is wrong
    pass
