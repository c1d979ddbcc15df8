"""training.batching: equal_steps -- every data node takes the same number of steps per epoch."""

from __future__ import annotations

import torch

from flexpl import planner as P
from flexpl.config.scenario import load_scenario
from flexpl.data.batching import batches, equal_steps
from flexpl.planner.shapes import batch_sizes
from flexpl.sim.simulator import run
from tests.conftest import digits_star
from tests.unit.planner.test_predict import _check_against_simulator, _close


class _Node:
    def __init__(self, n: int, key: int = 7) -> None:
        self.n, self.order_key = n, key

    def __len__(self) -> int:
        return self.n


def test_steps_are_the_mean_nodes_batch_count():
    assert equal_steps([16, 105, 20], 32) == 2  # mean 47 -> ceil(47 / 32)
    assert equal_steps([64, 64], 32) == 2
    assert equal_steps([3], 32) == 1  # at least one step


def test_each_epoch_is_cut_into_at_most_steps_batches_that_cover_the_shuffle():
    for n, steps, epochs, want in [(105, 2, 1, [53, 52]), (16, 2, 2, [8, 8, 8, 8]), (7, 3, 1, [3, 3, 1]),
                                   (2, 5, 1, [1, 1]), (64, 4, 3, [16] * 12)]:
        got = batches(_Node(n), seed=3, rnd=2, epochs=epochs, batch_size=32, steps=steps)
        sizes = [len(b) for b in got]
        assert sizes == want == batch_sizes(n, epochs, 32, None, steps), (n, steps)
        per = len(got) // epochs
        assert per <= steps
        for e in range(epochs):  # each epoch: every sample once
            assert sorted(torch.cat(got[e * per:(e + 1) * per]).tolist()) == list(range(n))
    # a node with the mean node's samples keeps batch_size: 600 samples in 19 steps are 18 x 32 + 24, as fixed
    assert batch_sizes(600, 1, 32, None, equal_steps([600] * 5, 32)) == batch_sizes(600, 1, 32, None)
    # the same shuffle as fixed batching: only where it is cut differs
    fixed = torch.cat(batches(_Node(50), 3, 2, 1, 32))
    assert torch.equal(torch.cat(batches(_Node(50), 3, 2, 1, 32, steps=4)), fixed)
    assert [len(b) for b in batches(_Node(50), 3, 2, 2, 32, max_steps=3, steps=2)] == [25, 25, 25]


def test_a_lockstep_trunk_meets_every_node_at_every_step_and_the_planner_predicts_it():
    """Dirichlet-skewed devices: with equal_steps every step of an fpl-sync round stacks every device's batch."""
    sets = ["training.rounds=2", "data.partition.kind=dirichlet", "data.partition.alpha=0.1",
            "training.batch_size=16", "training.batching=equal_steps"]
    scn = digits_star(sets, strategy="fpl-sync")
    pred = _check_against_simulator(scn)  # every cost, and the first round action by action
    assert pred.row["bytes_total"] > 0
    # fixed batching of the same data takes more steps (the largest node's), some with one device only
    fixed = P.Planner(digits_star(sets[:-1], strategy="fpl-sync")).predict(
        P.Candidate("own", "fpl-sync", None, "own"))
    assert fixed.row["flops_total"] != pred.row["flops_total"] or fixed.row["sim_time_s"] != pred.row["sim_time_s"]


def test_a_strategy_override_of_batching_reaches_its_run_and_its_prediction():
    sets = ["training.rounds=1", "data.partition.kind=dirichlet", "data.partition.alpha=0.1",
            "engine.executor=sequential", "strategy_overrides.fpl-sync.training.batching=equal_steps"]
    cand = P.Candidate("fpl-sync", "fpl-sync", None, "fpl-sync")
    pred = P.Planner(load_scenario("digits-star", sets, "fl", 0)).predict(cand)
    ran = run(load_scenario("digits-star", sets, "fpl-sync", 0)).summary
    assert ran["flops_total"] == pred.row["flops_total"] and ran["bytes_total"] == pred.row["bytes_total"]
    assert _close(pred.row["sim_time_s"], ran["sim_time_s"])
    plain = run(load_scenario("digits-star", sets[:-1], "fpl-sync", 0)).summary
    assert plain["sim_time_s"] != ran["sim_time_s"]
