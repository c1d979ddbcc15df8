"""flexpl tune: chooses per strategy on validation data only; compare --tuned applies the choice."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch
import yaml

from flexpl.cli import main
from flexpl.errors import UserError
from flexpl.sim import simulator
from flexpl.studies import tune as tune_mod
from flexpl.studies.seeds import parse_seeds

SETS = ["--set", "training.rounds=2", "--set", "training.checkpoint_every=0"]
GRID = ["--grid", "training.optimizer.lr=0.0005,0.05", "--grid", "training.optimizer.momentum=0.0,0.9"]


def _tune(out, extra: list[str] | None = None) -> tuple[dict, list[dict]]:
    rc = main(["tune", "digits-star", "--quiet", "--strategies", "fl,sl", *GRID, *SETS, "--out", str(out),
               *(extra or [])])
    assert rc == 0
    tuned = yaml.safe_load((out / "tuned.yaml").read_text())
    with open(out / "tune.csv") as f:
        return tuned, list(csv.DictReader(f))


@pytest.mark.slow
def test_tune_chooses_per_strategy_on_validation_only(tmp_path, monkeypatch) -> None:
    tuned, rows = _tune(tmp_path / "a")
    assert set(tuned) == {"fl", "sl"}
    assert len(rows) == 8 and sum(r["chosen"] == "True" for r in rows) == 2
    for s in ("fl", "sl"):
        mine = [r for r in rows if r["strategy"] == s]
        best = max(mine, key=lambda r: float(r["val_accuracy_mean"]))
        assert best["chosen"] == "True"
        assert tuned[s] == {"training.optimizer.lr": float(best["training.optimizer.lr"]),
                            "training.optimizer.momentum": float(best["training.optimizer.momentum"])}
    assert tuned["fl"]["training.optimizer.lr"] == 0.05  # 0.0005 barely moves in two rounds
    cell = json.loads(next((tmp_path / "a").glob("strategy=sl__*/summary.json")).read_text())
    assert cell["final_accuracy"] is None or cell["final_accuracy"] != cell["final_accuracy"]  # test never evaluated
    cfg = yaml.safe_load(next((tmp_path / "a").glob("strategy=sl__*/config.yaml")).read_text())
    assert cfg["data"]["validation_fraction"] == 0.1 and cfg["training"]["eval_test"] is False

    # poison the test set (labels shifted, images noise): the chosen values do not change
    load = simulator.load_data

    def poisoned(*a, **k):  # noqa: ANN002, ANN003
        d = load(*a, **k)
        g = torch.Generator().manual_seed(1)
        return dataclasses.replace(d, test_x=torch.randn(d.test_x.shape, generator=g),
                                   test_y=(d.test_y + 3) % d.num_classes)

    monkeypatch.setattr(simulator, "load_data", poisoned)
    tuned2, rows2 = _tune(tmp_path / "b")
    assert tuned2 == tuned
    assert [r["val_accuracy_mean"] for r in rows2] == [r["val_accuracy_mean"] for r in rows]
    monkeypatch.setattr(simulator, "load_data", load)

    # compare --tuned: each strategy gets its own chosen values, and only its own
    rc = main(["compare", "digits-star", "--quiet", "--strategies", "fl,sl", "--tuned", str(tmp_path / "a" / "tuned.yaml"),
               "--set", "training.rounds=1", "--out", str(tmp_path / "cmp")])
    assert rc == 0
    for s in ("fl", "sl"):
        opt = yaml.safe_load((tmp_path / "cmp" / s / "config.yaml").read_text())["training"]["optimizer"]
        assert (opt["lr"], opt["momentum"]) == (tuned[s]["training.optimizer.lr"],
                                                tuned[s]["training.optimizer.momentum"])


def test_choose_averages_seeds_and_ranks_diverged_last() -> None:
    ok = {"final_val_accuracy": 0.5}
    cells = [("fl", (("lr", "0.1"),), 0, {"final_val_accuracy": 0.9}),
             ("fl", (("lr", "0.1"),), 1, {"final_val_accuracy": 0.1, "diverged": "nan"}),
             ("fl", (("lr", "0.01"),), 0, ok), ("fl", (("lr", "0.01"),), 1, {"final_val_accuracy": 0.7}),
             ("sl", (("lr", "0.1"),), 0, {"final_val_accuracy": 0.3}), ("sl", (("lr", "0.1"),), 1, ok),
             ("sl", (("lr", "0.01"),), 0, ok), ("sl", (("lr", "0.01"),), 1, {"final_val_accuracy": 0.3})]
    tuned, rows = tune_mod.choose(cells)
    assert tuned == {"fl": {"lr": 0.01}, "sl": {"lr": 0.1}}  # sl: a tie (0.4 each) goes to the first listed
    fl01 = next(r for r in rows if r["strategy"] == "fl" and r["lr"] == "0.01")
    assert fl01["val_accuracy_mean"] == pytest.approx(0.6) and fl01["val_accuracy_std"] == pytest.approx(0.1)
    assert next(r for r in rows if r["strategy"] == "fl" and r["lr"] == "0.1")["diverged"] == 1


def test_bad_tune_input_is_one_line(tmp_path) -> None:
    with pytest.raises(UserError, match="--seeds"):
        parse_seeds("0,x")
    assert main(["tune", "digits-star", "--grid", "strategy=fl", "--out", str(tmp_path / "x")]) == 2
    (tmp_path / "bad.yaml").write_text("fl: 0.1\n")
    with pytest.raises(UserError, match="--tuned"):
        tune_mod.tuned_sets(tmp_path / "bad.yaml")
