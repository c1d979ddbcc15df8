"""No stale results: a rerun marks its folder first, and readers check summary against config.

See [Note: stale results] in flexpl.io.results.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from flexpl.cli import main
from flexpl.config.scenario import load_scenario
from flexpl.io.results import IN_PROGRESS, config_digest, stale_reason, write_yaml
from flexpl.studies.grid import make_cells, parse_grid
from flexpl.studies.sweep import is_finished as _finished
from flexpl.studies.sweep import write_sweep_csv

A = ["--strategy", "fl", "--set", "training.rounds=2", "--set", "training.max_steps_per_round=2"]
B = ["--strategy", "sl", "--set", "training.rounds=2", "--set", "training.max_steps_per_round=3"]


@pytest.mark.slow
def test_kill_9_between_two_different_runs_leaves_no_stale_summary(tmp_path, capsys, flexpl_forks):
    out = tmp_path / "run"
    assert main(["run", "digits-star", *A, "--out", str(out), "--quiet"]) == 0
    assert main(["report", str(out)]) == 0
    assert (out / "summary.json").exists() and (out / "report.html").exists() and not (out / IN_PROGRESS).exists()
    # a different run into the same folder, killed with SIGKILL in round 2
    # (a process of its own, forked from a server that imported the package: tests/forkserver.py)
    r = flexpl_forks.completed(["run", "digits-star", *B, "--out", str(out), "--quiet"],
                               env={"FLEXPL_TEST_KILL_AT": "2:1"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    digest_b = load_scenario("digits-star", B[3::2], "sl").digest()
    assert config_digest(out) == digest_b  # the new run's config ...
    assert json.loads((out / IN_PROGRESS).read_text())["scenario_sha256"] == digest_b  # ... marked in progress
    for name in ("summary.json", "timeline.csv", "report.html"):  # ... and nothing of the old run's
        assert not (out / name).exists(), name
    assert not list(out.glob("fig_*.png"))
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert [int(r["round"]) for r in rows] == [1]  # only the new run's finished round
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    assert "no finished run" in capsys.readouterr().err
    # resume still works from the killed run's checkpoint, and clears the marker at the end
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["strategy"] == "sl" and s["rounds"] == 2 and s["scenario_sha256"] == digest_b
    assert not (out / IN_PROGRESS).exists()


def _stale_folder(tmp_path: Path) -> Path:
    """A run folder whose summary.json is from run A but whose config.yaml is run B's (what main left)."""
    out = tmp_path / "sweep" / "strategy=fl"
    assert main(["run", "digits-star", *A, "--out", str(out), "--quiet"]) == 0
    write_yaml(out / "config.yaml", load_scenario("digits-star", B[3::2], "sl").resolved())
    return out


def test_report_leaves_out_a_summary_of_another_config(tmp_path, capsys):
    out = _stale_folder(tmp_path)
    why = stale_reason(out, json.loads((out / "summary.json").read_text()))
    assert why and "another scenario than its config.yaml" in why
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"flexpl: warning: report leaves out {out}: {why}"
    assert "no finished run" in err[1] and len(err) == 2
    # a good run beside it is reported; the stale one is not
    good = tmp_path / "sweep" / "strategy=sl"
    assert main(["run", "digits-star", *B, "--out", str(good), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "sweep")]) == 0
    assert capsys.readouterr().err.count("warning: report leaves out") == 1
    html = (tmp_path / "sweep" / "report.html").read_text()
    assert "strategy=sl/config.yaml" in html and "strategy=fl/config.yaml" not in html


def test_sweep_csv_and_resume_refuse_a_summary_of_another_config(tmp_path):
    out = _stale_folder(tmp_path)
    sweep = out.parent
    cells = make_cells(parse_grid(["strategy=fl"]))
    summary = json.loads((out / "summary.json").read_text())
    # the summary records the scenario the sweep would run there, but not the folder's config
    assert not _finished(out, summary["scenario_sha256"])
    assert write_sweep_csv(sweep, cells) == []
    assert (sweep / "sweep.csv").read_text().strip() == "cell,strategy"
    # once the folder is consistent again, the cell counts
    shutil.copy(out / "summary.json", tmp_path / "s.json")
    write_yaml(out / "config.yaml", yaml.safe_load(
        yaml.safe_dump(load_scenario("digits-star", A[3::2], "fl").resolved())))
    assert _finished(out, summary["scenario_sha256"])
    assert [r["cell"] for r in write_sweep_csv(sweep, cells)] == ["strategy=fl"]
    # with digests, a consistent cell of another scenario than the sweep's is left out too
    assert write_sweep_csv(sweep, cells, {"strategy=fl": "0" * 64}) == []


def test_a_bad_resume_leaves_the_folder_as_it_was(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "digits-star", *A, "--out", str(out), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code = main(["run", "digits-star", *B, "--resume", str(out), "--quiet"])  # another scenario: refused
    assert code == 2 and "different scenario" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
