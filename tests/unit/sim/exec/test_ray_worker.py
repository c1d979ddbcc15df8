"""A Ray worker of ``engine.executor: ray`` (``flexpl.sim.exec.ray_pool.RayWorker``), called in this process:
no Ray needed. Its memory does not grow with the number of clients it trains a round."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from flexpl.config.scenario import validate_scenario
from flexpl.data.batching import batches
from flexpl.sim.exec.ray_pool import RayWorker, peak_rss_bytes
from flexpl.sim.simulator import run, setup
from tests.conftest import digits_star


def star(clients: int) -> dict[str, Any]:
    """FedAvg over ``clients`` devices of a Wi-Fi star, a tiny MLP on 4 synthetic samples each."""
    return {
        "name": "ray-memory", "seed": 0,
        "data": {"dataset": "synthetic", "shape": [1, 4, 4], "classes": 4, "train": 4 * clients, "test": 64,
                 "partition": {"kind": "iid"}},
        "model": {"name": "mlp", "hidden": [32]},
        "training": {"rounds": 1, "batch_size": 4, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "engine": {"executor": "ray"},
        "nodes": [{"name": "server", "profile": "edge-server"}]
        + [{"name": f"dev{i}", "profile": "rpi4", "holds_data": True} for i in range(clients)],
        "links": [{"between": [f"dev{i}", "server"], "profile": "wifi"} for i in range(clients)],
        "strategy": "fl",
    }


def _reset_peak() -> bool:
    """Reset this process's peak resident memory (Linux: ``VmHWM``); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_a_worker_holds_one_model_whatever_the_clients_a_round() -> None:
    """Peak memory while training 1,000 clients is that of 10: one working model, summed in place."""
    scn = validate_scenario(star(1000))
    worker = RayWorker(scn, setup)
    eng = worker.eng
    assert list(eng.working) == [0] and len(eng.replicas[0]) == 1000
    assert len({id(r.module) for r in eng.replicas[0]}) == 1  # one module for every client
    glob = {s: m.state_dict() for s, m in eng.global_.items()}
    clients = [(n, [b.numpy() for b in batches(nd, scn.seed, 1, 1, 4, None, None)], {0: 1e-3})
               for n, nd in worker.by_name.items()]
    worker.train(glob, 0.05, clients[:10])  # warm-up: first-call allocations (kernels, caches)
    if not _reset_peak():
        pytest.skip("the peak resident memory cannot be reset here (Linux /proc/self/clear_refs)")
    worker.train(glob, 0.05, clients[:10])
    p10 = peak_rss_bytes()
    _reset_peak()
    part, losses = worker.train(glob, 0.05, clients)
    p1000 = peak_rss_bytes()
    assert len(losses) == 1000 and part[0].keys() == glob[0].keys()
    # measured 0.1-0.4 MiB on the project's machine (the returned losses and the clients' index lists)
    assert p1000 - p10 < 4 * 2**20, (p10, p1000)


def test_one_worker_sums_bitwise_as_the_sequential_engine() -> None:
    """One worker trains the round's clients in FedAvg order: its partial sum IS the sequential average."""
    scn = digits_star(["engine.executor=sequential", "training.rounds=1"])
    st = setup(scn)
    glob0 = {s: {k: v.clone() for k, v in m.state_dict().items()} for s, m in st.engine.global_.items()}
    run(scn, st=st)
    worker = RayWorker(digits_star(["engine.executor=ray"]), setup)
    tr = scn.training
    plan = {n: batches(nd, scn.seed, 1, tr.local_epochs, tr.batch_size, tr.max_steps_per_round, None)
            for n, nd in worker.by_name.items()}
    total = sum(sum(len(b) for b in bs) for bs in plan.values())
    clients = [(n, [b.numpy() for b in bs], {0: sum(len(b) for b in bs) / total}) for n, bs in plan.items()]
    part, _ = worker.train(glob0, float(scn.training.optimizer.lr), clients)
    want = st.engine.global_[0].state_dict()
    assert all(torch.equal(part[0][k], want[k]) for k in want)
    assert os.getpid() == worker.ready()


class _FakeRay:
    """Enough of the ``ray`` module for ``RayPool``: actors are objects in this process, refs are values."""

    def __init__(self, cpus: float) -> None:
        self.cpus = cpus
        self.killed = 0

    def remote(self, cls: type) -> Any:
        class Actor:
            def __init__(self, obj: Any) -> None:
                self.obj = obj

            def __getattr__(self, name: str) -> Any:
                method = getattr(self.obj, name)
                return type("Method", (), {"remote": staticmethod(method)})()

        class Cls:
            def options(self, **kw: Any) -> Cls:
                assert kw["num_cpus"] == 1
                return self

            def remote(self, *args: Any) -> Actor:
                return Actor(cls(*args))
        return Cls()

    def put(self, value: Any) -> Any:
        return value

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        return ref

    def kill(self, actor: Any) -> None:
        self.killed += 1

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": self.cpus}


@pytest.mark.equivalence
@pytest.mark.parametrize("strategy,extra", [
    ("fl", ["training.clients_per_round=0.5", "data.partition.kind=dirichlet", "data.partition.alpha=0.3"]),
    ("sfl", ["training.optimizer.name=adam", "training.optimizer.lr=0.01"]),
])
def test_the_pool_with_actors_in_this_process_equals_sequential(strategy: str, extra: list[str],
                                                                 monkeypatch) -> None:
    """The parent's side of a round (deal, partial sums added and installed, losses in order, the walk on
    shapes) with 3 actors faked in this process: the sequential trace, weights to round-off."""
    import contextlib

    from flexpl.io import ray_cluster

    fake = _FakeRay(3.0)
    monkeypatch.setattr(ray_cluster, "session", lambda *a, **k: contextlib.nullcontext(fake))
    out = {}
    for mode in ("sequential", "ray"):
        scn = digits_star([f"strategy={strategy}", f"engine.executor={mode}", "training.rounds=2"] + extra)
        st = setup(scn)
        res = run(scn, st=st, keep_traces=True)
        out[mode] = res, {s: m.state_dict() for s, m in st.engine.global_.items()}
    (ref, ref_w), (got, got_w) = out["sequential"], out["ray"]
    assert got.summary["executor"] == "ray" and fake.killed == 3
    for (ta, sa, ea), (tb, sb, eb) in zip(got.traces, ref.traces, strict=True):
        assert sa == sb and ea == eb and all(getattr(ta, k) == getattr(tb, k) for k in ta.__dict__)
    for k in ("flops_total", "bytes_total", "sim_time_s", "energy_j_total"):
        assert got.summary[k] == ref.summary[k], k
    for s, want in ref_w.items():
        for k, t in want.items():
            torch.testing.assert_close(got_w[s][k], t, rtol=1e-5, atol=1e-6)
    assert [r["train_loss"] for r in got.rounds] == pytest.approx([r["train_loss"] for r in ref.rounds], rel=1e-5)


def test_a_run_inside_a_ray_task_refuses_actors_of_its_own(monkeypatch) -> None:
    """A sweep cell run as a Ray task holds a CPU its actors would wait for: one line instead of a hang."""
    import contextlib

    from flexpl.errors import UserError
    from flexpl.io import ray_cluster
    from flexpl.sim.exec import ray_pool

    monkeypatch.setattr(ray_cluster, "session", lambda *a, **k: contextlib.nullcontext(_FakeRay(2.0)))
    monkeypatch.setattr(ray_pool, "_in_ray_task", lambda: True)
    with pytest.raises(UserError, match="this run is itself a Ray task"):
        run(digits_star(["engine.executor=ray", "training.rounds=1"]))
