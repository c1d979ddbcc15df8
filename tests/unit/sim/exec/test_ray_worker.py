"""A Ray worker of ``engine.executor: ray`` (``flexpl.sim.exec.ray_pool.RayWorker``), called in this process:
no Ray needed. Its memory does not grow with the number of clients it trains a round."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch

from flexpl.config.scenario import validate_scenario
from flexpl.data.batching import batches
from flexpl.sim.exec.ray_pool import RayWorker, peak_rss_bytes
from flexpl.sim.simulator import run, setup
from tests.conftest import digits_edges, digits_star


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


def _as_ray_delivers(value: Any) -> Any:
    """``value`` as an actor receives it: NumPy arrays read-only (Ray maps them from its object store)."""
    if isinstance(value, np.ndarray):
        out = value.copy()
        out.flags.writeable = False
        return out
    if isinstance(value, dict):
        return {k: _as_ray_delivers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_as_ray_delivers(v) for v in value)
    return value


class _FakeRay:
    """Enough of the ``ray`` module for ``RayPool``: actors are objects in this process, refs are values."""

    def __init__(self, cpus: float) -> None:
        self.cpus = cpus
        self.killed = 0
        self.objs: list[Any] = []  # the actors' objects, in creation order

    def remote(self, cls: type) -> Any:
        class Actor:
            def __init__(self, obj: Any) -> None:
                self.obj = obj

            def __getattr__(self, name: str) -> Any:
                method = getattr(self.obj, name)
                return type("Method", (), {"remote": staticmethod(
                    lambda *a, **k: method(*_as_ray_delivers(a), **_as_ray_delivers(k)))})()

        class Cls:
            def options(self, **kw: Any) -> Cls:
                assert kw["num_cpus"] == 1
                return self

            def remote(self, *args: Any) -> Actor:
                fake.objs.append(cls(*args))
                return Actor(fake.objs[-1])
        fake = self
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


def _fake_session(monkeypatch, cpus: float = 3.0) -> _FakeRay:
    import contextlib

    from flexpl.io import ray_cluster

    fake = _FakeRay(cpus)
    monkeypatch.setattr(ray_cluster, "session", lambda *a, **k: contextlib.nullcontext(fake))
    return fake


def _replicas(eng: Any) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    return {(s, r): {k: v.clone() for k, v in rep.module.state_dict().items()}
            for s, reps in enumerate(eng.replicas) for r, rep in enumerate(reps)}


def test_groups_are_the_nodes_that_share_a_replica() -> None:
    from flexpl.sim.exec.ray_pool import groups

    assert groups(setup(digits_edges(["strategy=fpl"])).engine.layout) == [["dev0", "dev1"], ["dev2", "dev3"]]
    assert groups(setup(digits_edges(["strategy=fl"])).engine.layout) == [["dev0"], ["dev1"], ["dev2"], ["dev3"]]
    assert groups(setup(digits_star(["strategy=fpl"])).engine.layout) == [["dev0", "dev1", "dev2", "dev3"]]


@pytest.mark.equivalence
# an actor gets its batches' index arrays read-only: using them must not warn (once per actor, in its log)
@pytest.mark.filterwarnings("error:The given NumPy array is not writable")
@pytest.mark.parametrize("strategy,extra", [
    ("fpl", []),
    ("fpl-sync", ["training.aggregator.kind=fedadam"]),  # (the server's moments stay in this process)
    ("fpl-group", []),
    # optimizer state kept across rounds (Adam, trunks averaged every 2 rounds), half the clients a round
    ("fpl", ["training.optimizer.name=adam", "training.optimizer.lr=0.01", "training.clients_per_round=0.5",
             "plan.trunk_sync_every=2", "training.rounds=3"]),
    # per-device cuts: a weak device's second front block hosted at its edge (Stage.hosts), never averaged
    ("fpl-devcut", ["plan.cut=2"]),
    # cuts by each device's energy, every piece of the front averaged at the cloud; a validation split
    ("fpl-sync-ecut", ["plan.cut=2", "data.validation_fraction=0.2"]),
])
def test_the_pool_runs_fpl_edges_by_group_equal_to_sequential(strategy: str, extra: list[str],
                                                              monkeypatch) -> None:
    """FPL with one trunk per edge, each edge's group on one of 2 actors faked in this process: the
    sequential trace; every replica (fronts that are never averaged included) and the accuracy to
    round-off. The fronts live in the actor owning their edge, which also evaluates their paths
    [Note: Ray evaluation]: the parent fetches them only at the end of the run."""
    fake = _fake_session(monkeypatch)
    calls = {"states": 0, "evaluate_part": 0, "train_groups": 0}
    for name in calls:
        real = getattr(RayWorker, name)
        monkeypatch.setattr(RayWorker, name, lambda self, *a, _real=real, _name=name, **k: (
            calls.__setitem__(_name, calls[_name] + 1), _real(self, *a, **k))[1])
    out = {}
    for mode in ("sequential", "ray"):
        scn = digits_edges([f"strategy={strategy}", f"engine.executor={mode}", "training.rounds=2"] + extra)
        st = setup(scn)
        init = _replicas(st.engine)
        res = run(scn, st=st, keep_traces=True)
        out[mode] = res, _replicas(st.engine), {s: m.state_dict() for s, m in st.engine.global_.items()}
    (ref, ref_r, ref_g), (got, got_r, got_g) = out["sequential"], out["ray"]
    assert got.summary["executor"] == "ray" and len(fake.objs) == 2 and fake.killed == 2
    for (ta, sa, ea), (tb, sb, eb) in zip(got.traces, ref.traces, strict=True):
        assert sa == sb and ea == eb and all(getattr(ta, k) == getattr(tb, k) for k in ta.__dict__)
    for k in ("flops_total", "bytes_total", "sim_time_s", "energy_j_total", "eval_flops"):
        assert got.summary[k] == ref.summary[k], k
    for key, want in ref_r.items():
        for k, t in want.items():
            torch.testing.assert_close(got_r[key][k], t, rtol=1e-5, atol=1e-6)
    for s, want in ref_g.items():
        for k, t in want.items():
            torch.testing.assert_close(got_g[s][k], t, rtol=1e-5, atol=1e-6)
    for k in ("accuracy", "loss", "accuracy_min", "accuracy_ensemble", "val_accuracy"):
        assert [r.get(k, 0.0) for r in got.rounds] == pytest.approx([r.get(k, 0.0) for r in ref.rounds], abs=1e-6), k
    assert [r["train_loss"] for r in got.rounds] == pytest.approx([r["train_loss"] for r in ref.rounds], rel=1e-5)
    # every round evaluated by both actors; the fronts fetched once (the run's end), not before each evaluation
    rounds = len(got.rounds)
    assert calls["evaluate_part"] == 2 * rounds * (2 if "data.validation_fraction=0.2" in extra else 1)
    # (each train_groups sends its trained trunks back with states; the rest are the parent's fetches)
    assert calls["states"] - calls["train_groups"] == 2  # the fronts of both actors, once
    # each edge's devices trained in one actor only: the other actor's copies of their fronts never moved
    owned = [["dev0", "dev1"], ["dev2", "dev3"]]
    for w, obj in enumerate(fake.objs):
        fronts = {n: obj.eng.replicas[0][obj.eng.layout.serves[0][n]].module.state_dict() for n in obj.by_name}
        for mine, nodes in ((True, owned[w]), (False, owned[1 - w])):
            for n in nodes:
                r = obj.eng.layout.serves[0][n]
                want = got_r[(0, r)] if mine else init[(0, r)]
                assert all(torch.equal(fronts[n][k], want[k]) for k in want), (w, n, mine)


def test_a_resumed_fpl_run_on_ray_gives_its_actors_the_checkpointed_fronts(monkeypatch, tmp_path) -> None:
    """Stopped after round 2 and resumed: the checkpoint holds the fronts (and their Adam state) fetched
    from the actors, the new actors get them back, and round 3 ends where an uninterrupted run ends."""
    _fake_session(monkeypatch)
    sets = ["strategy=fpl", "training.rounds=3", "training.optimizer.name=adam", "training.optimizer.lr=0.01",
            "training.checkpoint_every=1"]

    class Stop(Exception):
        pass

    def stop(row: dict) -> None:
        if row["round"] == 2:
            raise Stop

    full_st = setup(digits_edges([*sets, "engine.executor=sequential"]))
    full = run(full_st.scn, st=full_st)
    scn = digits_edges([*sets, "engine.executor=ray"])
    with pytest.raises(Stop):
        run(scn, checkpoint_dir=tmp_path, on_round=stop)
    st = setup(scn)
    res = run(scn, st=st, checkpoint_dir=tmp_path, resume=True)
    assert [r["round"] for r in res.rounds] == [1, 2, 3]
    want, got = _replicas(full_st.engine), _replicas(st.engine)
    for key, w in want.items():
        for k, t in w.items():
            torch.testing.assert_close(got[key][k], t, rtol=1e-5, atol=1e-6)
    assert res.summary["flops_total"] == full.summary["flops_total"]
    assert res.rounds[-1]["accuracy"] == pytest.approx(full.rounds[-1]["accuracy"], abs=1e-6)


@pytest.mark.parametrize("extra", [["failures.dropout=0.2"], ["training.aggregator.kind=fedprox"]])
def test_fpl_variants_ray_does_not_run_are_refused_in_one_line(extra: list[str], monkeypatch) -> None:
    from flexpl.errors import UserError

    _fake_session(monkeypatch)
    with pytest.raises(UserError, match="not supported yet.*FPL with per-edge trunks") as err:
        setup(digits_edges(["strategy=fpl", "engine.executor=ray", *extra]))
    assert "\n" not in str(err.value)


class _ActorDied(Exception):
    """Stands for ``ray.exceptions.RayActorError`` (an actor's process died)."""


class _Dead:
    """What a fake actor 'returns' when its process died mid-call: ``get`` raises ``_ActorDied``."""


class _DyingRay(_FakeRay):
    exceptions = type("exceptions", (), {"RayActorError": _ActorDied})

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        if isinstance(ref, _Dead):
            raise _ActorDied("The actor died unexpectedly before finishing this task.")
        return ref


@pytest.mark.parametrize("strategy", ["fl", "fpl"])
def test_an_actor_dying_mid_round_is_one_line_and_exit_3(strategy: str, monkeypatch, tmp_path, capsys) -> None:
    """An actor's process dies in round 2: the run stops with one line naming the actor, its pid and the
    round (exit 3), and round 1's files stay as written."""
    import contextlib

    from flexpl.cli import main
    from flexpl.io import ray_cluster
    from flexpl.sim.exec import ray_pool

    fake = _DyingRay(2.0)
    monkeypatch.setattr(ray_cluster, "session", lambda *a, **k: contextlib.nullcontext(fake))
    method = "train" if strategy == "fl" else "train_groups"
    real = getattr(ray_pool.RayWorker, method)
    calls = []

    def dies_in_round_2(self, *args: Any) -> Any:
        calls.append(1)
        return _Dead() if len(calls) == 3 else real(self, *args)  # 2 actors: call 3 is round 2's first

    monkeypatch.setattr(ray_pool.RayWorker, method, dies_in_round_2)
    out = tmp_path / "run"
    scenario = digits_star if strategy == "fl" else digits_edges
    path = tmp_path / "scn.yaml"
    import yaml

    path.write_text(yaml.safe_dump(scenario([f"strategy={strategy}", "engine.executor=ray",
                                             "training.rounds=3"]).resolved()))
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Ray actor 1 of 2" in err[0] and f"pid {os.getpid()}" in err[0], err
    assert "in round 2" in err[0] and "--resume" in err[0]
    rows = (out / "rounds.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,")  # round 1 kept, nothing of round 2
