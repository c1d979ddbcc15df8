"""Aggregators (flexpl.models.aggregate), by hand: FedAvg, FedProx's client gradient, FedAdam over two rounds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flexpl.models.aggregate import FedAdam, FedAvg, FedProx, fedavg, proximal_grad


def test_fedavg_aggregator_is_bitwise_the_fedavg_function():
    g = torch.Generator().manual_seed(1)
    states = [{"w": torch.randn(5, generator=g), "n": torch.tensor(3 + i)} for i in range(3)]
    out = FedAvg().aggregate(states[0], states, [1.0, 2.0, 3.0])
    ref = fedavg(states, [1.0, 2.0, 3.0])
    assert all(torch.equal(out[k], ref[k]) for k in ref)


def test_fedprox_client_gradient_by_hand():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    p.grad = torch.tensor([0.5, 0.25])
    proximal_grad([("w", p)], {"w": torch.tensor([0.0, 2.0])}, mu=0.1)
    # g + mu * (w - w_global) = [0.5 + 0.1 * 1, 0.25 + 0.1 * (-4)]
    assert torch.allclose(p.grad, torch.tensor([0.6, -0.15]))
    assert FedProx(0.1).proximal == 0.1 and FedProx(0.1).aggregate({}, [{"w": p.detach()}], [1.0])["w"].tolist() == \
        [1.0, -2.0]


def test_fedadam_two_rounds_by_hand():
    agg = FedAdam(eta=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    x = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64), "n": torch.tensor(4)}
    states = [{"w": torch.tensor([2.0, 2.0], dtype=torch.float64), "n": torch.tensor(2)},
              {"w": torch.tensor([4.0, 2.0], dtype=torch.float64), "n": torch.tensor(4)}]
    m = v = 0.0
    w = 1.0
    for _ in range(2):
        x = agg.aggregate(x, states, [1.0, 1.0], key="s0")
        delta = 3.0 - w                   # the mean of 2 and 4, minus the global weight
        m = 0.9 * m + 0.1 * delta
        v = 0.99 * v + 0.01 * delta ** 2
        w = w + 0.1 * m / (math.sqrt(v) + 1e-3)
        assert x["w"][0].item() == pytest.approx(w, rel=1e-12)
        assert x["w"][1].item() == 2.0   # no pseudo-gradient, no move
        assert x["n"].item() == 3        # integer buffers: FedAvg's rounded mean
    assert agg.m["s0"]["w"][0].item() == pytest.approx(m) and agg.v["s0"]["w"][0].item() == pytest.approx(v)
    assert agg.flops(2, 10) == (2 * 2 - 1) * 10 + 2 + 13 * 10
