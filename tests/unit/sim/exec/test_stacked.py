"""Arenas (flexpl.sim.exec.stacked) live where their replicas live: on a device other than the CPU too.

The meta device stands in for a GPU here: a tensor made on the CPU and pointed at another device's
storage is refused by torch whatever that device is, so an arena built on meta fails exactly where one
built on CUDA would (this is how FPL's stacked fronts failed on a GPU before)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flexpl.config.training import OptimizerCfg
from flexpl.sim.exec.stacked import Arena, alias


@pytest.mark.parametrize("opt", [{"name": "sgd", "lr": 0.1, "momentum": 0.9}, {"name": "adam", "lr": 0.01}])
def test_an_arena_of_replicas_on_another_device_stays_there(opt: dict) -> None:
    mods = [nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 3)).to("meta") for _ in range(3)]
    arena = Arena(mods, OptimizerCfg(**opt))
    assert {p.device.type for m in mods for p in m.parameters()} == {"meta"}  # each replica's row, on its device
    assert {t.device.type for t in arena.params.values()} == {"meta"}
    assert all(t.device.type == "meta" for d in arena.state.values() for t in d.values())
    first = dict(mods[0].named_parameters())["2.weight"]
    assert first.untyped_storage().data_ptr() == arena.params["2.weight"].untyped_storage().data_ptr()


def test_alias_is_a_row_of_the_same_memory_with_its_own_version_counter() -> None:
    base = torch.arange(12.0).reshape(3, 4)
    row = alias(base, 1)
    assert row.device == base.device and torch.equal(row, base[1])
    row.add_(1.0)
    assert torch.equal(base[1], torch.tensor([5.0, 6.0, 7.0, 8.0]))  # the same memory
    assert row._version != base._version  # ... but autograd sees its changes apart


def test_reset_zeroes_the_optimizer_state_of_rows_given_out_of_order() -> None:
    mods = [nn.Linear(2, 2) for _ in range(4)]
    arena = Arena(mods, OptimizerCfg(name="adam", lr=0.01))
    for d in arena.state.values():
        for t in d.values():
            t.fill_(1.0)
    arena.steps.fill_(3.0)
    arena.reset([3, 1])  # not a slice: an index tensor for the rows, another for Adam's step counts (on the CPU)
    for d in arena.state.values():
        for t in d.values():
            assert t[[1, 3]].eq(0).all() and t[[0, 2]].eq(1).all()
    assert arena.steps[[1, 3]].eq(0).all() and arena.steps[[0, 2]].eq(3).all()
