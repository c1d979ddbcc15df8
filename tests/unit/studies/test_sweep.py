"""Tests for flexpl.studies.sweep: grid parsing, cell names, resuming after a crash, worker processes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from flexpl import cli
from flexpl.errors import UserError
from flexpl.studies import grid, sweep
from flexpl.studies import run_one as runs

SETS = ["--set", "training.rounds=2", "--set", "data.partition.kind=dirichlet"]
GRID = ["--grid", "strategy=fl,fpl", "--grid", "data.partition.alpha=0.1,1.0"]
CELLS = ["strategy=fl__data.partition.alpha=0.1", "strategy=fl__data.partition.alpha=1.0",
         "strategy=fpl__data.partition.alpha=0.1", "strategy=fpl__data.partition.alpha=1.0"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tiny MLP gains nothing from intra-op threads, and on a busy 2-core box they thrash."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_rows(path: Path) -> list[dict[str, str]]:
    """sweep.csv as a list of dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_parse_grid_and_cells_in_order():
    axes = grid.parse_grid(["strategy=fl,fpl", "data.partition.alpha=0.1, 1.0", "plan.cut=[1,2],3"])
    assert axes == [("strategy", ["fl", "fpl"]), ("data.partition.alpha", ["0.1", "1.0"]),
                    ("plan.cut", ["[1,2]", "3"])]
    cells = grid.make_cells(axes[:2])
    assert [c.name for c in cells] == CELLS  # first axis varies slowest
    assert cells[1].strategy == "fl" and cells[1].sets == ("data.partition.alpha=1.0",)


def test_split_values_keeps_yaml_lists_whole():
    assert grid.split_values("1,[2, 3],{a: 1, b: 2}") == ["1", "[2, 3]", "{a: 1, b: 2}"]


def test_cell_names_are_safe_and_unique():
    a = grid.cell_name([("model.hidden", "[64, 32]")])
    b = grid.cell_name([("model.hidden", "[64,32]")])
    assert "/" not in a and " " not in a and a != b
    assert grid.cell_name([("strategy", "fl")]) == "strategy=fl"  # readable names stay as they are
    assert len(grid.cell_name([("k", "x" * 400)])) < 200


@pytest.mark.parametrize("spec", ["strategy", "=fl", "a..b=1", "strategy=fl,,fpl", "strategy=fl,fl",
                                  "strategy=nope", "training.rounds=zero,2"])
def test_bad_grid_is_a_user_error_naming_grid(spec, tmp_path, capsys):
    rc = cli.main(["sweep", "digits-star", "--grid", spec, "--out", str(tmp_path / "sw"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--grid" in err and err.count("\n") == 1


def test_no_grid_and_repeated_key_are_user_errors():
    with pytest.raises(UserError, match="--grid"):
        grid.parse_grid([])
    with pytest.raises(UserError, match="given twice"):
        grid.parse_grid(["strategy=fl", "strategy=fpl"])


@pytest.mark.slow
def test_sweep_resumes_after_a_crash(tmp_path, monkeypatch):
    out = tmp_path / "sw"
    argv = ["sweep", "digits-star", *SETS, *GRID, "--out", str(out), "--quiet"]
    real = runs.run_one
    calls: list[str] = []

    def crash_in_second_cell(scenario, sets, strategy, seed, out_dir, quiet, label="", show_data=False):
        calls.append(out_dir.name)
        if len(calls) == 2:  # killed mid-cell: a folder and part of rounds.csv, but no summary.json
            out_dir.mkdir(parents=True, exist_ok=True)  # the cell lock made it
            (out_dir / "rounds.csv").write_text("round,accuracy\n1,0.5\n")
            raise RuntimeError("killed")
        return real(scenario, sets, strategy, seed, out_dir, quiet, label, show_data)

    monkeypatch.setattr(runs, "run_one", crash_in_second_cell)
    with pytest.raises(RuntimeError, match="killed"):
        cli.main(argv)
    assert calls == CELLS[:2]
    assert [r["cell"] for r in read_rows(out / "sweep.csv")] == CELLS[:1]  # written after the first cell
    first = out / CELLS[0] / "summary.json"
    mtime = first.stat().st_mtime_ns

    def counting(scenario, sets, strategy, seed, out_dir, quiet, label="", show_data=False):
        calls.append(out_dir.name)
        return real(scenario, sets, strategy, seed, out_dir, quiet, label, show_data)

    calls.clear()
    monkeypatch.setattr(runs, "run_one", counting)
    assert cli.main(argv) == 0
    assert calls == CELLS[1:]  # the finished cell is skipped, the unfinished one redone
    assert first.stat().st_mtime_ns == mtime
    rows = read_rows(out / "sweep.csv")
    assert [r["cell"] for r in rows] == CELLS
    assert list(rows[0])[:3] == ["cell", "strategy", "data.partition.alpha"]
    for r in rows:
        s = json.loads((out / r["cell"] / "summary.json").read_text())
        assert r["strategy"] == s["strategy"] and float(r["final_accuracy"]) == pytest.approx(s["final_accuracy"])
        assert "per_node" not in r and "plan" not in r  # only the flat summary keys
    assert (out / "report.html").is_file() and 'alt="timeline"' in (out / "report.html").read_text()

    calls.clear()  # a third run has nothing left to do and leaves sweep.csv as it was
    before = (out / "sweep.csv").read_text()
    assert cli.main(argv) == 0
    assert calls == [] and (out / "sweep.csv").read_text() == before


def test_changed_scenario_reruns_the_cell(tmp_path, monkeypatch):
    out = tmp_path / "sw"
    real = runs.run_one
    calls: list[int] = []

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(runs, "run_one", counting)
    for rounds, expected_calls in ((1, 1), (1, 1), (2, 2)):
        sweep.run_sweep("digits-star", [f"training.rounds={rounds}"], ["strategy=fl"], None, out, quiet=True)
        assert len(calls) == expected_calls
    assert json.loads((out / "strategy=fl" / "summary.json").read_text())["rounds"] == 2


@pytest.mark.slow
def test_jobs_run_cells_in_worker_processes(tmp_path):
    out = tmp_path / "sw"
    rc = cli.main(["sweep", "digits-star", "--set", "training.rounds=1", "--grid", "strategy=fl,fpl",
                   "--jobs", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    rows = read_rows(out / "sweep.csv")
    assert [r["cell"] for r in rows] == ["strategy=fl", "strategy=fpl"]
    assert all((out / r["cell"] / "timeline.csv").is_file() for r in rows)
    assert (out / "report.html").is_file()
