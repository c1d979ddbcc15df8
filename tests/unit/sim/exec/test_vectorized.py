"""Vectorized working models (flexpl.sim.exec.vectorized): many FedAvg clients trained K at a time agree with
the sequential engine to float round-off, with the very same trace and costs."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from flexpl.config.load import apply_set
from flexpl.config.scenario import validate_scenario
from flexpl.sim.exec import vectorized as vecwork
from flexpl.sim.simulator import run, setup

COSTS = ("flops_total", "bytes_total", "wasted_bytes")
CLOCK = ("sim_time_s", "energy_j_total", "energy_j_compute", "energy_j_comm")
pytestmark = pytest.mark.equivalence


def many_clients(sets: list[str] | None = None, clients: int = 30, model: dict | None = None) -> Any:
    """An mlp-1000-like scenario on the digits data: ``clients`` phones, Dirichlet 0.5, batch 10."""
    data: dict[str, Any] = {
        "name": "many", "seed": 0, "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}},
        "model": model or {"name": "mlp", "hidden": [64, 32]},
        "training": {"rounds": 2, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "server": "cloud",
        "nodes": [{"name": "cloud", "profile": "cloud-server"},
                  {"name": "phone{i}", "count": clients, "profile": "phone", "holds_data": True}],
        "links": [{"between": ["phone{i}", "cloud"], "count": clients, "profile": "lte"}],
        "strategy": "fl",
        "engine": {"vector_chunk": 8},
    }
    for s in sets or []:
        apply_set(data, s)
    return validate_scenario(copy.deepcopy(data))


def _run(mode: str, sets: list[str]) -> tuple[Any, Any]:
    # one round from the same weights: vectorized and sequential use other kernels, so their round-off
    # differs from the first step; within one round it only adds up over the steps (holds on any CPU),
    # while over several rounds training amplifies it (~30x a round) and a bound holds on one CPU only
    scn = many_clients([f"engine.executor={mode}", "training.rounds=1", *sets])
    st = setup(scn)
    res = run(scn, st=st, keep_traces=True)
    return st, res


def _agree(sets: list[str], rtol: float = 1e-5, atol: float = 1e-6) -> None:
    base_st, base = _run("sequential", sets)
    st, res = _run("vectorized", sets)
    assert st.vecwork is not None and st.engine.working and st.engine.vector_chunk is None
    assert base_st.engine.working  # the sequential engine trains the same clients on a working model
    for k in COSTS:
        assert res.summary[k] == base.summary[k], k
    for k in CLOCK:
        assert res.summary[k] == pytest.approx(base.summary[k], rel=1e-12), k
    for (tr, st_, en), (tr0, st0, en0) in zip(res.traces, base.traces):  # the trace itself
        assert tr == tr0 and list(st_) == list(st0) and list(en) == list(en0)
    for s, g in st.engine.global_.items():
        ref = base_st.engine.global_[s].state_dict()
        for key, v in g.state_dict().items():
            torch.testing.assert_close(v, ref[key], rtol=rtol, atol=atol)
    assert [r["train_loss"] for r in res.rounds] == pytest.approx([r["train_loss"] for r in base.rounds], rel=1e-5)
    assert [r["accuracy"] for r in res.rounds] == pytest.approx([r["accuracy"] for r in base.rounds], abs=1e-3)


def test_dirichlet_unequal_batch_counts_sgd_momentum() -> None:
    scn = many_clients()
    st = setup(scn)
    counts = {-(-len(nd) // 10) for nd in st.nodes}
    assert len(counts) > 3  # clients drop out of the lockstep at different steps
    assert any(len(nd) % 10 for nd in st.nodes)  # and last batches are short (padded)
    _agree([])


def test_iid_without_momentum() -> None:
    _agree(["data.partition.kind=iid", "training.optimizer.momentum=0.0"])


def test_partial_participation_weight_decay_clipping_two_epochs() -> None:
    # two local epochs: a short batch in the middle of a client's steps
    _agree(["training.clients_per_round=0.5", "training.optimizer.weight_decay=0.01",
            "training.optimizer.clip_norm=0.5", "training.local_epochs=2"])


def test_adam() -> None:
    # Adam divides by the root of tiny second moments: round-off grows (as for the replica arena's vectorized mode)
    _agree(["training.optimizer.name=adam", "training.optimizer.lr=0.01", "training.optimizer.weight_decay=0.01"],
           rtol=1e-4, atol=1e-5)


def test_threads_and_chunks_do_not_change_the_result() -> None:
    def weights(sets: list[str]) -> dict[str, torch.Tensor]:
        # one round: a whole chunk sums the clients in another order than chunks of 8 (see _run)
        scn = many_clients(["engine.executor=vectorized", "training.rounds=1", *sets])
        st = setup(scn)
        run(scn, st=st)
        return st.engine.global_[0].state_dict()

    one = weights(["engine.workers=1"])
    two = weights(["engine.workers=2"])
    assert all(torch.equal(one[k], two[k]) for k in one)  # chunks enter the sum in order, whichever thread
    whole = weights(["engine.vector_chunk=64"])  # every client in one chunk
    for k in one:
        torch.testing.assert_close(whole[k], one[k], rtol=1e-5, atol=1e-6)


def test_stacked_forward_matches_the_module() -> None:
    torch.manual_seed(0)
    mod = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 5), nn.Sigmoid(),
                        nn.Linear(5, 3, bias=False), nn.Identity(), nn.ReLU())
    ops = vecwork.compile_ops(mod)
    assert ops is not None
    mods = [copy.deepcopy(mod) for _ in range(3)]
    for m in mods[1:]:
        for p in m.parameters():
            p.data.normal_()
    names = [n for n, _ in mod.named_parameters()]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in mods]) for n in names}
    x = torch.randn(3, 4, 3, 2, 2)
    y, saved = vecwork._forward(ops, params, x)
    dy = torch.randn_like(y)
    grads: dict[str, torch.Tensor] = {}

    def put(name: str, a: torch.Tensor, b: torch.Tensor | None) -> None:
        grads[name] = a.sum(1) if b is None else torch.bmm(a, b)

    vecwork._backward(ops, params, saved, dy, put)
    for i, m in enumerate(mods):
        out = m(x[i])
        torch.testing.assert_close(y[i], out.detach(), rtol=1e-5, atol=1e-6)
        out.backward(dy[i])
        for n, p in m.named_parameters():
            torch.testing.assert_close(grads[n][i], p.grad, rtol=1e-5, atol=1e-6)


def test_which_plans_train_stacked() -> None:
    assert setup(many_clients(["engine.executor=vectorized"])).vecwork is not None
    # split learning stages, FedProx, and layers this mode does not run keep the replica arena
    for sets in (["strategy=sfl"], ["training.aggregator.kind=fedprox", "training.aggregator.mu=0.01"]):
        st = setup(many_clients(["engine.executor=vectorized", *sets]))
        assert st.vecwork is None, sets
    assert setup(many_clients(["engine.executor=vectorized"], model={"name": "cnn"})).vecwork is None
    assert vecwork.compile_ops(nn.Sequential(nn.Linear(3, 3), nn.Dropout())) is None


def test_auto_trains_working_model_plans_stacked() -> None:
    st = setup(many_clients())
    assert st.executor.mode == "vectorized" and st.vecwork is not None
    assert "working models" in st.executor.reason
    st = setup(many_clients(["strategy=sfl"]))  # the server stage is shared: not working models
    assert st.vecwork is None
    st = setup(many_clients(["engine.executor=processes"]))  # asked: kept
    assert st.executor.mode == "processes" and st.vecwork is None
    # few clients of a model above the old vmap bound (50k parameters): auto keeps a mode bitwise equal to sequential
    few = setup(many_clients(clients=8, model={"name": "mlp", "hidden": [400, 100]}))
    assert few.vecwork is None and few.executor.mode != "vectorized"
    assert setup(many_clients(clients=16, model={"name": "mlp", "hidden": [400, 100]})).vecwork is not None
