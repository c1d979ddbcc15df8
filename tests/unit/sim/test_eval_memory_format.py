"""``engine.eval_memory_format`` (flexpl.sim.device.channels_last): evaluation of convolutional paths in
channels-last memory format on the CPU changes no weight, no accuracy, no bill; a model that ``.view()``s
an activation falls back to contiguous under ``auto`` and is a one-line error under ``channels_last``."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import flexpl
from flexpl.errors import UserError
from flexpl.sim import evaluate as evmod
from flexpl.sim.engine import path_state
from flexpl.sim.simulator import run, setup
from tests.conftest import digits_star

SETS = ["model=cnn", "training.rounds=2", "training.max_steps_per_round=3"]


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, for each evaluation that went channels-last, whether every 4-D weight was channels-last then."""
    seen: list[bool] = []
    real = evmod.channels_last

    @contextlib.contextmanager
    def spy(mods):
        mods = list(mods)
        with real(mods) as on:
            if on:
                seen.append(all(p.is_contiguous(memory_format=torch.channels_last)
                                for m in mods for p in m.parameters() if p.dim() == 4))
            yield on

    monkeypatch.setattr(evmod, "channels_last", spy)
    return seen


@pytest.mark.parametrize("strategy", ["fl", "fpl"])
def test_channels_last_evaluation_changes_no_weight_accuracy_or_bill(strategy: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sets = [f"strategy={strategy}", *SETS]
    flat = setup(digits_star([*sets, "engine.eval_memory_format=contiguous"]))
    a = run(flat.scn, st=flat)
    seen = _spy(monkeypatch)
    cl = setup(digits_star(sets))  # auto: channels-last on the CPU
    b = run(cl.scn, st=cl)
    assert seen and all(seen)  # it ran, with the convolutions' weights channels-last
    for n in flat.scn.data_nodes:  # training never saw it: the same weights, bit for bit, in the usual layout
        sa, sb = path_state(flat.engine, n), path_state(cl.engine, n)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert all(t.is_contiguous() for t in sb.values())
    for ra, rb in zip(a.rounds, b.rounds, strict=True):
        assert ra["accuracy"] == rb["accuracy"] and ra["accuracy_min"] == rb["accuracy_min"]
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5) and ra["train_loss"] == rb["train_loss"]
        assert all(ra[k] == rb[k] for k in ("flops", "bytes", "sim_time_s", "energy_j"))


def test_contiguous_or_a_model_without_convolutions_never_goes_channels_last(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spy(monkeypatch)
    run(digits_star([*SETS, "engine.eval_memory_format=contiguous"]))
    run(digits_star(["training.rounds=1", "training.max_steps_per_round=2"]))  # the MLP: nothing to change
    assert seen == []


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)  # fails on a channels-last activation: .reshape would copy


class _ThreeChannels(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a one-channel image is contiguous and channels-last at once, and so, for torch, is what a convolution
        # makes of it: three channels make the contiguous layout the only one, as on RGB data
        return x.expand(-1, 3, -1, -1).contiguous()


def _view_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    _, h, w = input_shape
    return nn.Sequential(nn.Sequential(_ThreeChannels(), nn.Conv2d(3, 4, 3, padding=1)),
                         nn.Sequential(nn.ReLU(), _Flatten(), nn.Linear(4 * h * w, num_classes)))


def test_a_model_that_views_an_activation_falls_back_under_auto_and_is_one_line_under_channels_last() -> None:
    flexpl.register_model("test-view-cnn", _view_cnn)
    sets = ["model=test-view-cnn", "training.rounds=1", "training.max_steps_per_round=2"]
    flat = run(digits_star([*sets, "engine.eval_memory_format=contiguous"]))
    st = setup(digits_star(sets))
    auto = run(st.scn, st=st)
    assert auto.rounds[0]["accuracy"] == flat.rounds[0]["accuracy"]
    assert st.engine.eval_memory_format == "contiguous"  # remembered for the rest of the run
    with pytest.raises(UserError, match=r"^engine.eval_memory_format: .*use \.reshape\(\) or "
                                        r"engine.eval_memory_format=contiguous$"):
        run(digits_star([*sets, "engine.eval_memory_format=channels_last"]))
