"""Optimizer options: learning-rate schedules, SGD weight decay, gradient clipping, the same in every executor."""

from __future__ import annotations

import math

import pytest
import torch

from flexpl.config.training import OptimizerCfg
from flexpl.errors import UserError
from flexpl.sim.replica import lr_at
from flexpl.sim.simulator import run, setup
from tests.conftest import digits_star


def test_step_schedule_by_hand() -> None:
    cfg = OptimizerCfg(lr=0.1, schedule="step", step_every=2, gamma=0.5)
    assert [lr_at(cfg, r, 5) for r in range(1, 6)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025], abs=1e-15)


def test_cosine_schedule_by_hand() -> None:
    cfg = OptimizerCfg(lr=0.1, schedule="cosine", min_lr=0.01)
    # min_lr + (lr - min_lr) * (1 + cos(pi * t / 4)) / 2, t = 0..3; cos(pi/4) = 0.70710678
    want = [0.1, 0.01 + 0.09 * 1.70710678 / 2, 0.055, 0.01 + 0.09 * 0.29289322 / 2]
    assert [lr_at(cfg, r, 4) for r in range(1, 5)] == pytest.approx(want, abs=1e-9)
    assert lr_at(OptimizerCfg(lr=0.3), 7, 10) == 0.3  # constant


def test_cosine_min_lr_above_lr_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"training\.optimizer\.min_lr"):
        digits_star(["training.optimizer.schedule=cosine", "training.optimizer.min_lr=1.0"])


def test_each_round_trains_at_its_scheduled_lr() -> None:
    scn = digits_star(["training.rounds=3", "training.optimizer.schedule=step", "training.optimizer.gamma=0.1",
                       "engine.executor=sequential"])
    st = setup(scn)
    res = run(scn, st=st)
    assert [r["lr"] for r in res.rounds] == pytest.approx([0.05, 0.005, 0.0005], rel=1e-12)
    used = {g["lr"] for reps in st.engine.replicas for r in reps if r.opt for g in r.opt.param_groups}
    assert len(used) == 1 and used.pop() == pytest.approx(0.0005, rel=1e-12)


def _grad_norms(monkeypatch: pytest.MonkeyPatch, sets: list[str]) -> list[float]:
    """The L2 norm of every replica's gradient at each optimizer step of a sequential run."""
    norms: list[float] = []
    orig = torch.optim.SGD.step

    def step(self, *a, **k):  # noqa: ANN001, ANN002, ANN003
        gs = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gs]))))
        return orig(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    run(digits_star(["engine.executor=sequential", "training.rounds=1", *sets]))
    monkeypatch.setattr(torch.optim.SGD, "step", orig)
    return norms


def test_clipping_bounds_the_gradient_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    free = _grad_norms(monkeypatch, ["strategy=sl"])
    assert max(free) > 0.2  # without clipping, gradients are larger than the bound below
    clipped = _grad_norms(monkeypatch, ["strategy=sl", "training.optimizer.clip_norm=0.2"])
    assert len(clipped) == len(free)
    assert max(clipped) <= 0.2 * (1 + 1e-5)
    assert sum(n > 0.19 for n in clipped) > len(clipped) // 4  # many were cut down to the bound


@pytest.mark.equivalence
@pytest.mark.parametrize("strategy", ["fl", "fpl"])
def test_schedule_clipping_and_weight_decay_agree_in_every_executor(strategy: str) -> None:
    from flexpl.sim.engine import path_state

    sets = [f"strategy={strategy}", "training.rounds=3", "training.optimizer.schedule=cosine",
            "training.optimizer.min_lr=0.005", "training.optimizer.clip_norm=0.3",
            "training.optimizer.weight_decay=0.01"]
    out = {}
    # processes: the same arithmetic, so bitwise over the three rounds (the schedule moves the lr).
    # vectorized: other kernels, so compared after one round from the same weights, where round-off
    # only adds up over the round's steps and no later round amplifies it (holds on any CPU; over
    # three rounds it grows ~30x a round and the bound would hold on one kind of CPU only)
    for mode, rounds in (("sequential", 3), ("processes", 3), ("vectorized", 1), ("sequential-1", 1)):
        scn = digits_star([*sets, f"engine.executor={mode.split('-')[0]}", f"training.rounds={rounds}"])
        st = setup(scn)
        assert st.executor.mode == mode.split("-")[0]
        res = run(scn, st=st)
        out[mode] = ({n: path_state(st.engine, n) for n in scn.data_nodes}, res.rounds)
    ref, ref_rows = out["sequential"]
    plain = run(digits_star([f"strategy={strategy}", "training.rounds=3", "engine.executor=sequential"]))
    assert plain.rounds[-1]["train_loss"] != ref_rows[-1]["train_loss"]  # the options change the arithmetic
    for node, state in ref.items():
        for key, t in state.items():
            assert torch.equal(out["processes"][0][node][key], t), (node, key)  # bitwise, one thread
    for node, state in out["sequential-1"][0].items():
        for key, t in state.items():
            torch.testing.assert_close(out["vectorized"][0][node][key], t, rtol=1e-5, atol=1e-6)
    assert [r["train_loss"] for r in out["processes"][1]] == [r["train_loss"] for r in ref_rows]
    assert all(math.isfinite(r["train_loss"]) for r in ref_rows)


def test_sgd_weight_decay_shrinks_weights_by_hand() -> None:
    from flexpl.sim.replica import make_optimizer

    lin = torch.nn.Linear(3, 2)
    w0 = lin.weight.detach().clone()
    opt = make_optimizer(lin, OptimizerCfg(lr=0.1, momentum=0.0, weight_decay=0.5))
    for p in lin.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(lin.weight.detach(), w0 * (1 - 0.1 * 0.5))  # w - lr * (grad + wd * w)
