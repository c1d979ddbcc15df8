"""FLOP counts (flexpl.costs.flops): forward and backward by hand, optimizer and FedAvg FLOPs billed where
they run (issue 16, defect 2: every FLOP), and the cached count equal to a fresh one."""

from __future__ import annotations

import pytest
import torch

from flexpl.costs.flops import FlopCache, count_fwd_bwd
from flexpl.models import build_model


def test_flops_of_linear_relu_cross_entropy_by_hand():
    """B=2 samples, Linear(3, 4) + ReLU, cross-entropy over the 4 outputs (README "Costs, exactly")."""
    import torch
    from torch import nn

    from flexpl.costs.flops import count_fwd_bwd

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    b, i, o = 2, 3, 4
    fwd = (2 * b * i * o + b * o) + b * o + (5 * b * o + b) + (b + 1)  # addmm+bias, relu, log_softmax, nll mean
    bwd = (b + 1) + 4 * b * o + b * o + 2 * o * b * i + b * o  # nll, log_softmax, relu, weight grad, bias grad
    assert (fwd, bwd) == (109, 99)
    assert count_fwd_bwd(m, (b, i), False, loss=True) == (fwd, bwd)
    # the input gradient adds one matmul; the classic count keeps matmuls only
    assert count_fwd_bwd(m, (b, i), True, loss=True) == (fwd, bwd + 2 * b * o * i)
    assert count_fwd_bwd(m, (b, i), False, loss=True, classic=True) == (2 * b * i * o, 2 * o * b * i)


def test_optimizer_and_fedavg_flops_by_hand():
    from flexpl.costs.flops import optimizer_flops
    from flexpl.models.aggregate import fedavg_flops

    p = 3 * 4 + 4
    assert optimizer_flops(p, "sgd") == 2 * p                    # p -= lr * g
    assert optimizer_flops(p, "sgd", momentum=0.9) == 4 * p      # + buf = m * buf + g
    assert optimizer_flops(p, "sgd", momentum=0.9, weight_decay=1e-4) == 6 * p
    assert optimizer_flops(p, "adam") == 13 * p
    assert fedavg_flops(3, p) == 5 * p + 3                       # 3 multiplies + 2 adds per element, 3 weights
    assert fedavg_flops(1, p) == 0


def test_optimizer_and_aggregation_are_billed_where_they_run():
    """One FedAvg step on digits-star: each device pays forward, loss, backward and its SGD-momentum step;
    the server pays the average of 4 replicas."""
    from flexpl.costs.flops import count_fwd_bwd, optimizer_flops
    from flexpl.models import build_model, count_params
    from flexpl.models.aggregate import fedavg_flops
    from flexpl.sim.simulator import run
    from tests.conftest import digits_star

    scn = digits_star(["training.rounds=1", "training.max_steps_per_round=1"])
    s = run(scn).summary
    model = build_model(scn.model, (1, 8, 8), 10, seed=0)
    p = count_params(model)
    step = sum(count_fwd_bwd(model, (32, 1, 8, 8), False, loss=True)) + optimizer_flops(p, "sgd", momentum=0.9)
    for n in scn.data_nodes:
        assert s["per_node"][n]["flops"] == step, n
    assert s["per_node"]["server"]["flops"] == fedavg_flops(4, p) == 7 * p + 4
    assert s["flops_total"] == 4 * step + 7 * p + 4


@pytest.mark.equivalence
def test_cached_flop_count_equals_a_fresh_count() -> None:
    model = build_model("cnn", (1, 28, 28), 10, seed=0)
    cache = FlopCache()
    sizes = [32, 32, 7, 32, 19, 1, 25, 32, 3]
    for b in sizes:
        got = cache.get(0, model, (b, 1, 28, 28), False)
        assert got == count_fwd_bwd(model, (b, 1, 28, 28), False), b
        got = cache.get(1, model, (b, 1, 28, 28), True)
        assert got == count_fwd_bwd(model, (b, 1, 28, 28), True), b
    # 3 counts per (stage, sample shape) establish the line; the other sizes were read off it
    assert cache.counted == 6
    assert len(cache) == 2 * len(set(sizes))


@pytest.mark.equivalence
def test_flop_cache_keeps_counting_when_cost_is_not_linear_in_the_batch() -> None:
    class Quadratic(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) @ x.flatten(1).T  # B x B: cost grows with B squared

    cache = FlopCache()
    for b in [2, 4, 8, 16]:
        assert cache.get(0, Quadratic(), (b, 3), False) == count_fwd_bwd(Quadratic(), (b, 3), False)
    assert cache.counted == 4
