"""Set-up in proportion to the work: replicas without weight copies, and FedAvg clients on working models
(flexpl.sim.exec.working) that give bitwise the replicas' results. (Routes computed once: system/test_topology.py.)"""

from __future__ import annotations

import copy

import pytest
import torch

from flexpl.models import build_model
from flexpl.sim.engine import meta_copy, shell_copy
from flexpl.sim.simulator import setup
from tests.conftest import digits_star


def test_meta_and_shell_copies_match_deep_copies():
    model = build_model({"name": "mlp", "hidden": [16]}, (1, 8, 8), 10, seed=0)
    meta = meta_copy(model)
    ref = [(n, p.shape, p.requires_grad, type(p)) for n, p in copy.deepcopy(model).to("meta").named_parameters()]
    assert [(n, p.shape, p.requires_grad, type(p)) for n, p in meta.named_parameters()] == ref
    assert all(p.is_meta for p in meta.parameters()) and not any(p.is_meta for p in model.parameters())
    shell = shell_copy(model)
    assert shell is not model and all(a is b for a, b in zip(shell.parameters(), model.parameters()))


def test_arena_replicas_get_rows_of_their_own_without_deep_copies():
    # (clients whose optimizer survives the round: replicas of their own, not working models)
    st = setup(digits_star(["training.rounds=1", "training.optimizer.reset_on_sync=false"]))
    eng = st.engine
    assert 0 in eng.arenas
    reps = eng.replicas[0]
    first = dict(reps[0].module.named_parameters())
    for r in reps[1:]:  # same initial values, different memory
        for n, p in r.module.named_parameters():
            assert torch.equal(p, first[n]) and p.data_ptr() != first[n].data_ptr()
    glob = dict(eng.global_[0].named_parameters())
    assert all(p.data_ptr() != glob[n].data_ptr() and torch.equal(p, glob[n]) for n, p in first.items())


def _fedavg_run(mode: str, working: bool, extra: list[str] | None = None):
    """A 3-round FedAvg run with clients on working models or on replicas of their own; summary, rows, weights."""
    from flexpl.sim import engine as core
    from flexpl.sim.simulator import run

    scn = digits_star([f"engine.executor={mode}", "training.rounds=3", "training.local_epochs=2",
                       "training.optimizer.momentum=0.9"] + (extra or []))
    real = core.working_stages
    try:
        if not working:
            core.working_stages = lambda *a, **k: []
        st = setup(scn)
        res = run(scn, st=st, keep_traces=True)
    finally:
        core.working_stages = real
    assert bool(st.engine.working) == working and st.executor.mode == mode
    return res, st.engine.global_[0].state_dict()


@pytest.mark.parametrize("mode", ["sequential", "processes"])
@pytest.mark.parametrize("extra", [[], ["training.clients_per_round=0.5"],
                                   ["training.optimizer.name=adam", "training.optimizer.lr=0.01"],
                                   ["training.optimizer.clip_norm=0.5", "training.optimizer.weight_decay=0.01"]])
def test_working_models_give_bitwise_the_replicas_results(mode: str, extra: list[str]) -> None:
    """[Note: working models] One model per worker, summed client by client: the same weights, losses and trace."""
    ref, ref_w = _fedavg_run(mode, False, extra)
    got, got_w = _fedavg_run(mode, True, extra)
    assert ref_w.keys() == got_w.keys() and all(torch.equal(got_w[k], ref_w[k]) for k in ref_w)
    assert [r["train_loss"] for r in got.rounds] == [r["train_loss"] for r in ref.rounds]
    assert [r["accuracy"] for r in got.rounds] == [r["accuracy"] for r in ref.rounds]
    skip = {"wall_s"}
    assert {k: v for k, v in got.summary.items() if k not in skip} == \
        {k: v for k, v in ref.summary.items() if k not in skip}
    for (ta, sa, ea), (tb, sb, eb) in zip(got.traces, ref.traces, strict=True):
        assert sa == sb and ea == eb and len(ta.kind) == len(tb.kind)


@pytest.mark.parametrize("mode", ["sequential", "processes"])
def test_working_models_out_of_turn(mode: str, monkeypatch) -> None:
    """Clients finishing out of FedAvg order: without the round announced (kept aside until the upload),
    or with workers allowed one waiting client (they wait for each other); uneven clients (Dirichlet)."""
    from flexpl.sim import engine as core
    from flexpl.sim.exec import fedavg_sum as fold

    extra = ["data.partition.kind=dirichlet", "data.partition.alpha=0.3"]
    ref, ref_w = _fedavg_run(mode, False, extra)
    if mode == "sequential":
        monkeypatch.setattr(core.Engine, "expect_round", lambda self, samples, reset=True: None)
    else:
        monkeypatch.setattr(fold, "MAX_PENDING", 0)
    got, got_w = _fedavg_run(mode, True, extra)
    assert all(torch.equal(got_w[k], ref_w[k]) for k in ref_w)
    assert [r["train_loss"] for r in got.rounds] == [r["train_loss"] for r in ref.rounds]


def test_working_models_hold_no_state_per_client() -> None:
    """The clients of a FedAvg stage share one module and optimizer; no arena of rows per client."""
    st = setup(digits_star(["engine.executor=sequential"]))
    eng = st.engine
    assert list(eng.working) == [0] and 0 not in eng.arenas
    assert len({id(r.module) for r in eng.replicas[0]}) == 1 and len({id(r.opt) for r in eng.replicas[0]}) == 1


def test_working_models_are_off_where_client_state_survives() -> None:
    for extra in (["training.optimizer.reset_on_sync=false"], ["strategy=fpl"], ["strategy=sfl"],
                  ["failures.dropout=0.1"], ["engine.executor=vectorized", "strategy=sfl"]):
        st = setup(digits_star(extra))
        assert not st.engine.working, extra
    assert setup(digits_star(["engine.executor=processes"])).engine.working
    # vectorized FedAvg trains its clients K at a time on stacked working models (flexpl.sim.exec.vectorized)
    st = setup(digits_star(["engine.executor=vectorized"]))
    assert st.engine.working and st.vecwork is not None and not st.engine.arenas


def test_one_path_ensemble_is_the_stacked_mean() -> None:
    """The ensemble over nodes that share one path is averaged over a broadcast view: bitwise the stacked mean."""
    torch.manual_seed(0)
    for n, t in ((3, 50), (1000, 700)):
        x = torch.randn(t, 10)
        assert torch.equal(x.expand(n, t, 10).mean(0), torch.stack([x] * n).mean(0))
