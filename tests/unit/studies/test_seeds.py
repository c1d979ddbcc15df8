"""Several seeds: aggregation worked out by hand, compare --seeds and sweep --seeds end to end."""

from __future__ import annotations

import csv
import json
import math

import pytest

from flexpl.cli import main
from flexpl.errors import UserError
from flexpl.studies.seeds import aggregate_seeds, mean_std, parse_seeds, seed_groups, within_spread
from flexpl.studies.sweep import run_sweep


def test_aggregate_seeds_by_hand():
    rows = [{"strategy": "fl", "seed": 0, "final_accuracy": 0.5, "bytes_total": 100},
            {"strategy": "fl", "seed": 1, "final_accuracy": 0.7, "bytes_total": 100},
            {"strategy": "fl", "seed": 2, "final_accuracy": 0.6, "bytes_total": 130}]
    a = aggregate_seeds(rows)
    assert a["strategy"] == "fl" and a["seeds"] == 3 and "seed_mean" not in a
    assert a["final_accuracy_mean"] == pytest.approx(0.6)
    # sample std (ddof=1): sqrt((0.01 + 0.01 + 0) / 2) = 0.1
    assert a["final_accuracy_std"] == pytest.approx(0.1)
    assert a["bytes_total_mean"] == pytest.approx(110.0)
    assert a["bytes_total_std"] == pytest.approx(math.sqrt((100 + 100 + 400) / 2))
    assert not any(k.endswith("_n") for k in a)  # nothing missing: no count columns


def test_aggregate_seeds_skips_missing_values_and_counts_them():
    rows = [{"bytes_to_target": 10.0, "t": None}, {"bytes_to_target": None, "t": ""},
            {"bytes_to_target": 20.0, "t": float("nan")}, {"bytes_to_target": 40.0, "t": None}]
    a = aggregate_seeds(rows)
    assert a["bytes_to_target_mean"] == pytest.approx(70 / 3)
    assert a["bytes_to_target_std"] == pytest.approx(math.sqrt(((10 - 70 / 3) ** 2 + (20 - 70 / 3) ** 2
                                                                + (40 - 70 / 3) ** 2) / 2))
    assert a["bytes_to_target_n"] == 3
    assert a["t_mean"] is None and a["t_std"] is None and a["t_n"] == 0


def test_one_seed_has_zero_std_and_differing_text_is_dropped():
    assert mean_std([0.25]) == (0.25, 0.0)
    a = aggregate_seeds([{"scenario_sha256": "a", "x": 1}, {"scenario_sha256": "b", "x": 3}])
    assert "scenario_sha256" not in a and a["x_mean"] == 2.0 and a["x_std"] == pytest.approx(math.sqrt(2))


def test_within_spread_marks_differences_smaller_than_the_larger_std():
    aggs = [{"final_accuracy_mean": 0.80, "final_accuracy_std": 0.01},   # best
            {"final_accuracy_mean": 0.78, "final_accuracy_std": 0.03},   # 0.02 <= 0.03: within
            {"final_accuracy_mean": 0.70, "final_accuracy_std": 0.05},   # 0.10 > 0.05: separable
            {"final_accuracy_mean": None, "final_accuracy_std": None}]
    assert within_spread(aggs) == [True, True, False, False]
    assert within_spread(aggs[:1] + aggs[2:3]) == [False, False]


def test_parse_seeds_and_seed_groups():
    assert parse_seeds("0, 1,2") == [0, 1, 2] and parse_seeds(None) is None
    for bad in ("0,x", "1,1", "-1"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)
    assert seed_groups(["fl/seed0", "fl/seed1", "fpl", "a=b/seed3"]) == {"fl": [(0, 0), (1, 1)],
                                                                         "a=b": [(3, 3)]}


@pytest.mark.slow
def test_compare_with_two_seeds_writes_mean_and_std(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "digits-star", "--strategies", "fl,fpl-sync", "--seeds", "0,1",
                 "--set", "training.rounds=1", "--set", "data.partition.kind=dirichlet",
                 "--set", "data.partition.alpha=0.3", "--out", str(out)]) == 0
    printed = capsys.readouterr().err
    assert "mean ± sample std" in printed and " ± " in printed
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["strategy"] for r in rows] == ["fl", "fpl-sync"]
    for r in rows:
        summ = [json.loads((out / r["strategy"] / f"seed{k}" / "summary.json").read_text()) for k in (0, 1)]
        assert [s["seed"] for s in summ] == [0, 1]
        for col in ("final_accuracy", "bytes_total", "energy_j_total"):
            a, b = summ[0][col], summ[1][col]
            assert float(r[f"{col}_mean"]) == pytest.approx((a + b) / 2)
            assert float(r[f"{col}_std"]) == pytest.approx(abs(a - b) / math.sqrt(2))
        assert r["seeds"] == "2" and "device_energy_j_total_mean" in r
    # the seeds really differ (initial weights, partition, batches)
    assert float(rows[0]["final_accuracy_std"]) > 0
    per_seed = list(csv.DictReader((out / "comparison_seeds.csv").open()))
    assert [(r["strategy"], r["seed"]) for r in per_seed] == [("fl", "0"), ("fl", "1"),
                                                              ("fpl-sync", "0"), ("fpl-sync", "1")]
    html = (out / "report.html").read_text()
    assert "Over seeds" in html and (out / "fig_seeds_accuracy.png").is_file()
    # one more seed: the finished seeds are reused, only seed 2 runs
    before = (out / "fl" / "seed0" / "summary.json").stat().st_mtime_ns
    assert main(["compare", "digits-star", "--strategies", "fl", "--seeds", "0,1,2",
                 "--set", "training.rounds=1", "--set", "data.partition.kind=dirichlet",
                 "--set", "data.partition.alpha=0.3", "--out", str(out), "--quiet"]) == 0
    assert (out / "fl" / "seed0" / "summary.json").stat().st_mtime_ns == before
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [(r["strategy"], r["seeds"]) for r in rows] == [("fl", "3")]


def test_compare_seed_and_seeds_together_exit_2(tmp_path, capsys):
    assert main(["compare", "digits-star", "--seed", "1", "--seeds", "0,1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds" in err[0]


def test_sweep_with_seeds_runs_each_cell_per_seed_and_resumes(tmp_path):
    out = tmp_path / "sw"
    sets = ["training.rounds=1", "training.max_steps_per_round=2"]
    ran: list[str] = []

    def on_cell(c, summary):
        if summary is not None:
            ran.append(c.name)

    run_sweep("digits-star", sets, ["strategy=fl,fpl"], None, out, quiet=True, on_cell=on_cell, seeds=[0, 1])
    assert sorted(ran) == ["strategy=fl/seed0", "strategy=fl/seed1", "strategy=fpl/seed0", "strategy=fpl/seed1"]
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["cell"] for r in rows] == ["strategy=fl", "strategy=fpl"]
    s0 = json.loads((out / "strategy=fl" / "seed0" / "summary.json").read_text())
    s1 = json.loads((out / "strategy=fl" / "seed1" / "summary.json").read_text())
    assert s0["seed"] == 0 and s1["seed"] == 1
    assert float(rows[0]["final_accuracy_mean"]) == pytest.approx((s0["final_accuracy"] + s1["final_accuracy"]) / 2)
    assert len(list(csv.DictReader((out / "sweep_seeds.csv").open()))) == 4
    ran.clear()  # one more seed: only the new runs
    run_sweep("digits-star", sets, ["strategy=fl,fpl"], None, out, quiet=True, on_cell=on_cell, seeds=[0, 1, 2])
    assert sorted(ran) == ["strategy=fl/seed2", "strategy=fpl/seed2"]
    assert [r["seeds"] for r in csv.DictReader((out / "sweep.csv").open())] == ["3", "3"]


def test_sweep_seeds_refuses_a_seed_axis(tmp_path):
    with pytest.raises(UserError, match="--seeds"):
        run_sweep("digits-star", [], ["seed=0,1"], None, tmp_path, quiet=True, seeds=[0, 1])
