"""Cost to a target accuracy (flexpl.costs.targets): round and cumulative costs, null when never reached, stop at target."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from flexpl.cli import main
from flexpl.costs.targets import COSTS, cost_to_targets, target_columns
from flexpl.sim import checkpoint
from flexpl.sim.simulator import run
from tests.conftest import digits_star

COST_COLS = ["bytes", "energy_j", "device_energy_j", "sim_time_s", "flops"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def scripted(accuracies: list[float]):
    """An ``evaluate`` hook for simulator.run that returns the given accuracies, one per round."""
    seq = iter(accuracies)

    def evaluate(_st) -> dict[str, float]:
        return {"accuracy": next(seq), "loss": 1.0}
    return evaluate


def test_cost_to_targets_from_rows_by_hand():
    rows = [{"round": 1, "accuracy": math.nan, "bytes": 10, "energy_j": 1.0, "device_energy_j": 0.5,
             "sim_time_s": 2.0, "flops": 100},
            {"round": 2, "accuracy": 0.70, "bytes": 20, "energy_j": 2.0, "device_energy_j": 1.0,
             "sim_time_s": 4.0, "flops": 200},
            {"round": 3, "accuracy": 0.60, "bytes": 30, "energy_j": 3.0, "device_energy_j": 1.5,
             "sim_time_s": 6.0, "flops": 300},
            {"round": 4, "accuracy": 0.80, "bytes": 40, "energy_j": 4.0, "device_energy_j": 2.0,
             "sim_time_s": 8.0, "flops": 400}]
    got = cost_to_targets(rows, [0.75, 0.7, 0.9, 0.5])
    assert list(got) == ["0.5", "0.7", "0.75", "0.9"]
    # a NaN accuracy (round 1) never counts; exactly 0.70 reaches 0.7; a later dip does not matter
    assert got["0.5"] == got["0.7"] == {"round": 2, "bytes": 20, "energy_j": 2.0, "device_energy_j": 1.0,
                                        "sim_time_s": 4.0, "flops": 200}
    assert got["0.75"]["round"] == 4 and got["0.75"]["bytes"] == 40
    assert got["0.9"] is None
    cols = target_columns(got)
    assert cols["bytes_to_0.7"] == 20 and cols["round_to_0.75"] == 4 and cols["reached_0.7"] == 1
    assert cols["bytes_to_0.9"] is None and cols["round_to_0.9"] is None and cols["reached_0.9"] == 0
    # rounds.csv read back as text gives the same answer
    as_text = [{k: str(v) for k, v in r.items()} for r in rows]
    assert cost_to_targets(as_text, [0.7, 0.75, 0.9]) == {k: got[k] for k in ("0.7", "0.75", "0.9")}


def test_scripted_accuracies_give_costs_of_those_rounds():
    scn = digits_star(["training.rounds=4", "evaluation.targets=[0.7,0.75,0.9]"])
    res = run(scn, evaluate=scripted([0.5, 0.7, 0.65, 0.8]))
    rows, s = res.rounds, res.summary
    tt = s["to_target"]
    assert tt["0.7"] == {"round": 2, **{c: rows[1][c] for c in COST_COLS}}
    assert tt["0.75"] == {"round": 4, **{c: rows[3][c] for c in COST_COLS}}
    assert tt["0.9"] is None
    assert 0 < tt["0.7"]["bytes"] < tt["0.75"]["bytes"] == s["bytes_total"]
    assert 0 < tt["0.7"]["device_energy_j"] < tt["0.7"]["energy_j"]  # the server spends some too
    # device_energy_j is the data nodes' energy, cumulative
    devices = sum(s["per_node"][n]["energy_j"] for n in scn.data_nodes)
    assert rows[-1]["device_energy_j"] == pytest.approx(devices, rel=1e-12)
    assert s["stopped_at_target"] is False and s["rounds_completed"] == 4


def test_stop_at_target_stops_after_the_round_reaching_the_highest_target(tmp_path):
    sets = ["training.rounds=6", "evaluation.targets=[0.7,0.75]"]
    full = run(digits_star(sets), evaluate=scripted([0.5, 0.7, 0.65, 0.8, 0.9, 0.95]))
    scn = digits_star([*sets, "evaluation.stop_at_target=true"])
    res = run(scn, evaluate=scripted([0.5, 0.7, 0.65, 0.8, 0.9, 0.95]), checkpoint_dir=tmp_path)
    assert [r["round"] for r in res.rounds] == [1, 2, 3, 4]
    s = res.summary
    assert s["stopped_at_target"] is True and s["rounds_completed"] == 4 and s["rounds"] == 4
    assert s["to_target"] == full.summary["to_target"]  # stopping changes nothing before the stop
    assert s["bytes_total"] == full.rounds[3]["bytes"] == s["to_target"]["0.75"]["bytes"]
    blob = torch.load(tmp_path / checkpoint.FILENAME, weights_only=True)
    assert blob["round"] == 4  # the stopping round is checkpointed (checkpoint_every would not hit it)


def test_cli_run_to_target_matches_rounds_csv_and_stop_leaves_complete_folder(tmp_path):
    out = tmp_path / "full"
    assert main(["run", "digits-star", "--set", "training.rounds=3", "--target-accuracy", "0.5",
                 "--target-accuracy", "0.999", "--out", str(out), "--quiet"]) == 0
    rows = read_rows(out / "rounds.csv")
    text = (out / "summary.json").read_text()
    tt = json.loads(text)["to_target"]
    first = next(r for r in rows if float(r["accuracy"]) >= 0.5)  # read off rounds.csv by hand
    r = int(first["round"])
    assert r < 3, "the test needs a target reached before the last round"
    assert tt["0.5"]["round"] == r
    for c in COST_COLS:
        assert tt["0.5"][c] == pytest.approx(float(first[c]), rel=1e-12), c
    assert tt["0.999"] is None and '"0.999": null' in text  # never reached: null, not 0

    stop = tmp_path / "stop"
    assert main(["run", "digits-star", "--set", "training.rounds=3", "--target-accuracy", "0.5",
                 "--stop-at-target", "--out", str(stop), "--quiet"]) == 0
    s = json.loads((stop / "summary.json").read_text())
    got = read_rows(stop / "rounds.csv")
    assert len(got) == r and got == rows[:r]
    assert s["stopped_at_target"] is True and s["rounds_completed"] == r
    assert s["bytes_total"] == int(float(rows[r - 1]["bytes"]))
    assert (stop / "config.yaml").is_file() and (stop / checkpoint.FILENAME).is_file()
    assert torch.load(stop / checkpoint.FILENAME, weights_only=True)["round"] == r
    # resuming a run that stopped at its target trains no further
    assert main(["run", "--resume", str(stop), "--quiet"]) == 0
    assert read_rows(stop / "rounds.csv") == rows[:r]


@pytest.mark.slow
def test_compare_and_sweep_csv_have_target_columns(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "digits-star", "--strategies", "fl,fpl", "--set", "training.rounds=2",
                 "--target-accuracy", "0.3", "--target-accuracy", "0.999", "--out", str(out), "--quiet"]) == 0
    table = read_rows(out / "comparison.csv")
    for row in table:
        s = json.loads((out / row["strategy"] / "summary.json").read_text())
        hit = s["to_target"]["0.3"]
        assert hit is not None and row["reached_0.3"] == "1" and row["round_to_0.3"] == str(hit["round"])
        for c in COSTS:
            assert float(row[f"{c}_to_0.3"]) == pytest.approx(hit[c], rel=1e-12)
            assert row[f"{c}_to_0.999"] == ""  # empty, not 0
        assert row["reached_0.999"] == "0" and row["round_to_0.999"] == ""
    page = (out / "report.html").read_text()
    assert "Cost to reach each target" in page and "not reached" in page and 'class="best"' in page

    sw = tmp_path / "sweep"
    assert main(["sweep", "digits-star", "--grid", "strategy=fl", "--set", "training.rounds=1",
                 "--target-accuracy", "0.05", "--out", str(sw), "--quiet"]) == 0
    (row,) = read_rows(sw / "sweep.csv")
    assert row["round_to_0.05"] == "1" and row["bytes_to_0.05"] == row["bytes_total"]


@pytest.mark.parametrize("args, field", [
    (["--target-accuracy", "1.5"], "--target-accuracy"),
    (["--target-accuracy", "0"], "--target-accuracy"),
    (["--target-accuracy", "0.7", "--target-accuracy", "0.7"], "--target-accuracy"),
    (["--stop-at-target"], "evaluation.stop_at_target"),
    (["--set", "evaluation.targets=[0.7,2]"], "evaluation.targets[1]"),
    (["--target-accuracy", "0.7", "--stop-at-target", "--backend", "dist"], "--stop-at-target"),
])
def test_bad_target_input_is_one_line_exit_2(tmp_path, capsys, args, field):
    assert main(["run", "digits-star", "--out", str(tmp_path / "o"), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err, err


def test_console_table_one_row_per_run_and_target():
    from rich.console import Console

    from flexpl.cli.tables import targets_table as rich_table

    s = {"strategy": "fl", "to_target": cost_to_targets(
        [{"round": 3, "accuracy": 0.72, "bytes": 5, "energy_j": 1.5, "device_energy_j": 1.0,
          "sim_time_s": 2.0, "flops": 7}], [0.7, 0.8])}
    con = Console(record=True, width=200)
    con.print(rich_table([s]))
    lines = [ln for ln in con.export_text().splitlines() if ln.startswith("│ fl")]
    assert len(lines) == 2
    assert lines[0].split("│")[2:4] == [" 0.7 ".rjust(8), " 3 ".rjust(7)]
    assert lines[1].split("│")[3].strip() == "-"


@pytest.mark.slow
def test_compare_over_seeds_aggregates_cost_to_target_and_counts_the_seeds_that_reached_it(tmp_path):
    """Per seed: the costs at the round of the target; over seeds: mean, and ``_n`` = seeds that reached it."""
    import csv as _csv
    import json as _json

    from flexpl.cli import main as _main

    out = tmp_path / "cmp"
    assert _main(["compare", "digits-star", "--strategies", "fl", "--seeds", "0,1", "--set", "training.rounds=2",
                  "--set", "training.max_steps_per_round=3", "--target-accuracy", "0.01",
                  "--target-accuracy", "1.0", "--out", str(out), "--quiet"]) == 0
    (row,) = list(_csv.DictReader((out / "comparison.csv").open()))
    keys = list(_json.loads((out / "fl" / "seed0" / "summary.json").read_text())["to_target"])
    low, high = sorted(keys, key=float)
    firsts = [list(_csv.DictReader((out / "fl" / f"seed{k}" / "rounds.csv").open()))[0] for k in (0, 1)]
    assert float(row[f"bytes_to_{low}_mean"]) == pytest.approx(sum(float(r["bytes"]) for r in firsts) / 2)
    assert float(row[f"energy_j_to_{low}_mean"]) == pytest.approx(sum(float(r["energy_j"]) for r in firsts) / 2)
    assert float(row[f"reached_{low}_mean"]) == 1.0 and f"bytes_to_{low}_n" not in row
    # never reached by either seed (accuracy 1.0 on the whole test set): no mean, counted as 0 seeds
    assert row[f"bytes_to_{high}_mean"] == "" and row[f"bytes_to_{high}_n"] == "0"
    assert float(row[f"reached_{high}_mean"]) == 0.0
