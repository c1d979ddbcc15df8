"""``engine.train_memory_format: channels_last`` (flexpl.sim.device.train_channels_last): training's
convolutions run channels-last in every executor, the weights agree with contiguous training to float
round-off, the bill does not change; a model that ``.view()``s an activation is a one-line error."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import flexpl
from flexpl.errors import UserError
from flexpl.sim.engine import path_state
from flexpl.sim.simulator import run, setup
from tests.conftest import digits_edges, digits_star
from tests.unit.sim.test_eval_memory_format import _view_cnn

SETS = ["model=cnn", "training.rounds=2", "training.max_steps_per_round=3"]
CL = torch.channels_last


def _is_cl(t: torch.Tensor) -> bool:
    """Channels-last and not also contiguous (a weight of one input channel is both, the same bytes)."""
    return t.is_contiguous(memory_format=CL) and not t.is_contiguous()


def _conv_layouts(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, for each training convolution with several input channels, whether its output was channels-last."""
    seen: list[bool] = []
    real = nn.Conv2d._conv_forward

    def spy(self: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: Any) -> torch.Tensor:
        out = real(self, x, weight, bias)
        if torch.is_grad_enabled() and out.device.type == "cpu" and self.in_channels > 1:
            try:
                seen.append(_is_cl(out))
            except RuntimeError:  # inside vmap, where torch cannot say
                pass
        return out

    monkeypatch.setattr(nn.Conv2d, "_conv_forward", spy)
    return seen


@pytest.mark.parametrize("strategy,executor,scenario", [
    ("fl", "sequential", digits_star),   # working models
    ("fl", "processes", digits_star),    # working models in forked workers
    ("fpl", "sequential", digits_edges),  # arena rows (fronts), per-edge trunks averaged at the cloud
    ("fpl", "processes", digits_edges),   # the fronts' rows in shared memory, stepped by worker processes
    ("fpl", "vectorized", digits_edges),  # the fronts' rows vmapped (grouped convolutions)
    ("mp", "sequential", digits_star),   # one model, devices taking turns
])
def test_channels_last_training_agrees_with_contiguous_and_bills_the_same(
        strategy: str, executor: str, scenario: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sets = [f"strategy={strategy}", f"engine.executor={executor}", *SETS]
    flat = setup(scenario([*sets, "engine.train_memory_format=contiguous"]))
    a = run(flat.scn, st=flat)
    seen = _conv_layouts(monkeypatch)
    cl = setup(scenario([*sets, "engine.train_memory_format=channels_last"]))
    b = run(cl.scn, st=cl)
    assert b.summary["executor"] == a.summary["executor"] == executor
    if executor == "sequential":  # (forked workers' and vmapped convolutions are not seen here)
        assert seen and all(seen)
    # every convolution weight with several input channels, in every replica and global copy, is channels-last
    mods = [rep.module for reps in cl.engine.replicas for rep in reps] + list(cl.engine.global_.values()) \
        + list(cl.engine.group_global.values())
    weights = [p for m in mods for x in m.modules() if isinstance(x, nn.Conv2d) and x.in_channels > 1
               for p in (x.weight,)]
    assert weights and all(_is_cl(p) for p in weights)
    for n in flat.scn.data_nodes:  # the same training, to float round-off
        sa, sb = path_state(flat.engine, n), path_state(cl.engine, n)
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], rtol=1e-5, atol=1e-6)
    for ra, rb in zip(a.rounds, b.rounds, strict=True):
        assert rb["accuracy"] == pytest.approx(ra["accuracy"], abs=0.01)
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4)
        assert all(ra[k] == rb[k] for k in ("flops", "bytes", "sim_time_s", "energy_j", "eval_flops"))


def test_a_model_without_convolutions_is_left_as_it_is() -> None:
    st = setup(digits_star(["training.rounds=1", "engine.train_memory_format=channels_last"]))  # the MLP
    assert all(p.is_contiguous() for reps in st.engine.replicas for rep in reps for p in rep.module.parameters())


def test_a_model_that_views_an_activation_is_one_line_before_training() -> None:
    flexpl.register_model("test-view-cnn", _view_cnn)
    sets = ["model=test-view-cnn", "training.rounds=1", "training.max_steps_per_round=2"]
    run(digits_star([*sets, "engine.train_memory_format=contiguous"]))  # contiguous: it trains
    with pytest.raises(UserError, match=r"^engine.train_memory_format: .*use \.reshape\(\) or "
                                        r"engine.train_memory_format=contiguous$") as err:
        setup(digits_star([*sets, "engine.train_memory_format=channels_last"]))
    assert "\n" not in str(err.value)


def test_the_features_junction_refuses_channels_last_training_in_one_line() -> None:
    with pytest.raises(UserError, match="engine.train_memory_format: channels_last is for the simulator's plans "
                                        "with a batch junction") as err:
        setup(digits_star(["strategy=fpl-features", "model=cnn", "engine.train_memory_format=channels_last"]))
    assert "\n" not in str(err.value)


def test_arena_rows_keep_the_strides_a_channels_last_conversion_gives() -> None:
    """Also for one input channel, where both layouts hold the same bytes: torch picks a convolution's layout
    from the strides, and rows with the default ones made channels-last training slower than contiguous
    (a CNN step 0.81x) where the converted strides made it faster."""
    from flexpl.sim.exec.stacked import stack_rows

    for shape in ((32, 1, 5, 5), (64, 32, 5, 5)):
        rows = [torch.randn(shape).to(memory_format=CL) for _ in range(3)]
        out = stack_rows(rows)
        assert all(torch.equal(out[r], rows[r]) for r in range(3))
        assert all(out[r].stride() == rows[r].stride() for r in range(3))
    flat = [torch.randn(64, 32, 5, 5) for _ in range(2)]
    assert stack_rows(flat).is_contiguous()  # the default layout: torch.stack's
