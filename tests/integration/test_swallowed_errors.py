"""Errors that used to vanish: a report that cannot be drawn, candidates the planner skips,
a missing rounds.csv, status files a distributed worker cannot write."""

from __future__ import annotations

import csv
import sys
import types

import pytest

from flexpl.cli import main
from flexpl.dist.ranks import _Status

ONE = ["--set", "training.rounds=1", "--set", "training.max_steps_per_round=1"]


@pytest.fixture
def no_matplotlib(monkeypatch):
    """matplotlib cannot be imported (as on an install without it)."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("command", [["compare", "--strategies", "fl"], ["sweep", "--grid", "strategy=fl"]])
def test_a_report_that_cannot_be_drawn_is_one_warning_line(command, tmp_path, capsys, no_matplotlib):
    out = tmp_path / "out"
    code = main([command[0], "digits-star", *command[1:], *ONE, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0  # the results stand ...
    assert (out / "fl" / "summary.json").exists() or (out / "strategy=fl" / "summary.json").exists()
    assert not (out / "report.html").exists()  # ... only the report is missing, and that is said
    assert len(err) == 1 and err[0].startswith(f"flexpl: warning: no report.html in {out}/"), err
    assert "matplotlib" in err[0] and f"flexpl report {out}" in err[0]


@pytest.mark.slow
def test_plan_lists_the_candidates_it_skips_and_why(tmp_path, capsys):
    """Three data nodes cannot share an 8x8 image in equal patches: no fpl-features plan here."""
    out = tmp_path / "plan"
    assert main(["plan", "digits-star", "--set", "nodes.4.holds_data=false", "--out", str(out), "--quiet"]) == 0
    skipped = list(csv.DictReader((out / "skipped.csv").open()))
    assert [s["plan"] for s in skipped] == ["fpl-features cut=0", "fpl-features cut=1", "fpl-features cut=2"]
    assert all(s["family"] == "fpl-features" and "cannot cut 8x8 images into 3 equal patches" in s["reason"]
               for s in skipped)
    plans = list(csv.DictReader((out / "plans.csv").open()))
    assert plans and not [p for p in plans if p["family"] == "fpl-features"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flexpl: warning: plan skipped 3 candidate(s)"), err
    assert "fpl-features cut=0" in err[0] and "cannot cut 8x8 images" in err[0] and "skipped.csv" in err[0]
    # nothing skipped: an empty skipped.csv and no warning
    assert main(["plan", "digits-star", "--out", str(tmp_path / "p2"), "--quiet"]) == 0
    assert (tmp_path / "p2" / "skipped.csv").read_text() == "plan,family,reason\n"
    assert capsys.readouterr().err == ""


def test_report_names_a_missing_rounds_csv(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "digits-star", *ONE, "--out", str(out), "--quiet"]) == 0
    (out / "rounds.csv").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out / 'rounds.csv'} is missing" in err[0], err
    assert not (out / "report.html").exists()


def test_a_status_file_that_cannot_be_written_is_reported_once(tmp_path, capsys):
    gone = tmp_path / "workers"  # the launcher's status folder, removed under a running worker
    status = _Status(str(gone), 3, "dev2", types.SimpleNamespace(blocked=None))
    status.set(state="running", round=1)
    status.set(state="done")  # stops the heartbeat thread
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert "rank 3 (dev2): warning: cannot write status file" in err[0]
    assert str(gone / "rank3.json") in err[0] and "No such file or directory" in err[0]
