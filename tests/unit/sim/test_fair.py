"""Fair comparisons: validation split, per-strategy overrides, a diverged run stops with exit 3."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
import torch
import yaml

from flexpl.cli import main
from flexpl.config.scenario import load_scenario
from flexpl.data.partition import partition, validation_split
from flexpl.errors import UserError
from flexpl.sim.engine import Engine
from flexpl.sim.simulator import run, setup
from tests.conftest import digits_star


def test_validation_split_is_seeded_disjoint_and_per_node() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    parts = partition(labels, 4, "dirichlet", seed=0, alpha=0.3)
    train, val = validation_split(parts, 0.2, seed=0)
    for p, tr, va in zip(parts, train, val):
        assert len(va) == round(0.2 * len(p)) and len(tr) + len(va) == len(p)
        assert not set(tr) & set(va) and set(tr) | set(va) == set(p)  # disjoint, and from this node's samples
    train2, val2 = validation_split(parts, 0.2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(val, val2))  # seeded
    _, val3 = validation_split(parts, 0.2, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(val, val3))
    assert all(len(v) == 0 for v in validation_split(parts, 0.0, seed=0)[1])


def test_validation_samples_are_not_trained_on_nor_test_samples() -> None:
    scn = digits_star(["data.validation_fraction=0.25", "strategy=fl"])
    st = setup(scn)
    vx, vy = st.val
    n_train = sum(len(nd) for nd in st.nodes)
    assert len(vy) + n_train == len(st.data.train_y)
    parts = partition(st.data.train_y.numpy(), 4, "iid", seed=0)
    assert len(vy) == sum(len(v) for v in validation_split(parts, 0.25, seed=0)[1])

    def keys(x: torch.Tensor) -> set[bytes]:
        return {r.numpy().tobytes() for r in x}

    val_keys = keys(vx)
    assert not val_keys & set().union(*(keys(nd.x) for nd in st.nodes))
    assert not val_keys & keys(st.data.test_x)
    res = run(scn, st=st)
    assert all(0.0 <= r["val_accuracy"] <= 1.0 and np.isfinite(r["val_loss"]) for r in res.rounds)
    assert res.summary["final_val_accuracy"] == res.rounds[-1]["val_accuracy"]
    plain = run(digits_star(["strategy=fl", "training.rounds=1"]))
    assert "val_accuracy" not in plain.rounds[0] and "final_val_accuracy" not in plain.summary


def test_strategy_overrides_apply_only_to_their_strategy(tmp_path) -> None:
    data = yaml.safe_load(resources.files("flexpl.scenarios").joinpath("digits-star.yaml").read_text())
    data["strategy_overrides"] = {"sl": {"training.optimizer.lr": 0.01, "training.optimizer.momentum": 0.0},
                                  "fpl": {"training": {"optimizer": {"lr": 0.2}}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    lrs = {s: load_scenario(str(path), strategy=s).training.optimizer for s in ("fl", "sl", "fpl")}
    assert (lrs["fl"].lr, lrs["fl"].momentum) == (0.05, 0.9)
    assert (lrs["sl"].lr, lrs["sl"].momentum) == (0.01, 0.0)
    assert (lrs["fpl"].lr, lrs["fpl"].momentum) == (0.2, 0.9)
    # a field set on the command line wins over the override (a tune or sweep cell's own value)
    assert load_scenario(str(path), ["training.optimizer.lr=0.03"], strategy="sl").training.optimizer.lr == 0.03
    # added per strategy from the command line (what compare --tuned does), merged with the scenario's
    s = load_scenario(str(path), ["strategy_overrides.sl.training.optimizer.lr=0.007"], strategy="sl")
    assert (s.training.optimizer.lr, s.training.optimizer.momentum) == (0.007, 0.0)
    # the runs use them: sl's optimizers run at 0.01, fl's at 0.05
    for strat, want in (("sl", 0.01), ("fl", 0.05)):
        st = setup(load_scenario(str(path), ["training.rounds=1"], strategy=strat))
        run(st.scn, st=st)
        used = {g["lr"] for reps in st.engine.replicas for r in reps if r.opt for g in r.opt.param_groups}
        assert used == {want}
    data["strategy_overrides"] = {"sl": {"training.optimizer.lrr": 0.01}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"strategy_overrides\.sl"):
        load_scenario(str(path), strategy="sl")


def test_nan_loss_exits_3_with_one_line_and_keeps_completed_rounds(tmp_path, monkeypatch, capsys) -> None:
    orig = Engine.set_round

    def poison(self: Engine, rnd: int, rounds: int) -> float:  # weights turn to NaN before round 2
        if rnd == 2:
            with torch.no_grad():
                for reps in self.replicas:
                    for r in reps:
                        next(r.module.parameters()).fill_(float("nan"))
        return orig(self, rnd, rounds)

    monkeypatch.setattr(Engine, "set_round", poison)
    out = tmp_path / "run"
    rc = main(["run", "digits-star", "--quiet", "--strategy", "sl", "--set", "training.rounds=3",
               "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 3
    assert len(err.splitlines()) == 1 and "round 2" in err and "stage 0" in err, err
    rows = (out / "rounds.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # header + round 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 1 and "round 2" in summary["diverged"]


def test_feature_branches_hold_out_the_same_samples() -> None:
    st = setup(digits_star(["data.validation_fraction=0.2", "strategy=fpl-features"]))
    n = len(st.data.train_y)
    assert len(st.val[1]) == round(0.2 * n)
    assert all(len(nd) == n - len(st.val[1]) for nd in st.nodes)
    assert all(torch.equal(nd.y, st.nodes[0].y) for nd in st.nodes)  # every branch: the same samples
