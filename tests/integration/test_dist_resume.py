"""Checkpoints of the dist backend: a run stopped by a dead rank resumes with ``--resume`` and ends as an unbroken run.

Every run is digits-star (5 ranks: server, dev0..dev3) with fpl, 3 rounds of 2 steps, on
``engine.backend: dist``: its fronts are not averaged, so each device rank's checkpoint holds
real weights and optimizer state of its own and meta twins of the others'. Runs go through
``main([...])`` (or ``flexpl.simulate``) in this process, so the dist backend's fork server
stays warm from one run to the next.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch.distributed as dist

from flexpl.cli import main
from flexpl.dist.checkpoint import MARKER, rank_file
from flexpl.io.results import write_yaml
from tests.conftest import digits_star

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

WALL = ("wall_s", "wall_s_per_round")  # wall-clock figures: the only ones a resumed run may change
ROUNDS = 3


def _scenario(folder: Path) -> Path:
    path = folder / "scn.yaml"
    write_yaml(path, digits_star([f"training.rounds={ROUNDS}", "training.max_steps_per_round=2",
                                  "engine.backend=dist"], strategy="fpl").resolved())
    return path


def _run(*args: str) -> int:
    return main(["run", *args, "--backend", "dist", "--timeout", "30", "--quiet"])


def _rows(out: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in WALL} for r in csv.DictReader((out / "rounds.csv").open())]


def _summary(out: Path) -> dict:
    return {k: v for k, v in json.loads((out / "summary.json").read_text()).items() if k not in WALL}


def _committed(out: Path) -> int:
    return json.loads((out / "checkpoint" / MARKER).read_text())["round"]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run never stopped: its folder."""
    folder = tmp_path_factory.mktemp("unbroken")
    assert _run(str(_scenario(folder)), "--out", str(folder / "out")) == 0
    return folder / "out"


def _assert_as_unbroken(out: Path, unbroken: Path) -> None:
    """Accuracy, losses, bytes (accounted and measured), FLOPs, energy and virtual time: every round equal."""
    assert [r["round"] for r in _rows(out)] == [str(k) for k in range(1, ROUNDS + 1)]
    assert _rows(out) == _rows(unbroken)
    got, want = _summary(out), _summary(unbroken)
    assert got == want
    assert got["measured_bytes_total"] == got["bytes_total"] > 0  # the bytes before the kill are counted too
    assert all(float(r["wall_s"]) > 0 for r in csv.DictReader((out / "rounds.csv").open()))
    assert not (out / "IN_PROGRESS").exists()


def test_a_rank_killed_mid_run_stops_it_in_one_line_and_resume_finishes_it(tmp_path, capsys, monkeypatch,
                                                                            unbroken):
    """dev2 (rank 3) dies at its first step of round 3: exit 3 with one line; round 2 is committed; --resume
    runs round 3 only and the folder then holds the unbroken run's figures."""
    out = tmp_path / "out"
    monkeypatch.setenv("FLEXPL_DIST_FAULT", "3:3:exit")
    capsys.readouterr()
    assert _run(str(_scenario(tmp_path)), "--out", str(out)) == 3
    monkeypatch.delenv("FLEXPL_DIST_FAULT")
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["flexpl: error: node 'dev2' (rank 3) stopped responding in round 3 (exited with code 17)"], err
    assert [r["round"] for r in _rows(out)] == ["1", "2"] and not (out / "summary.json").exists()
    assert _committed(out) == 2 and all(rank_file(out, r, 2).is_file() for r in range(5))
    assert not list((out / "checkpoint").glob("*-round3.pt"))  # round 3 evaluates on rank 0 first: nobody got there
    assert _run("--resume", str(out)) == 0
    _assert_as_unbroken(out, unbroken)
    assert _committed(out) == ROUNDS  # the last round's checkpoint, and only it, is left
    assert sorted(p.name for p in (out / "checkpoint").glob("*.pt")) == [f"rank{r}-round{ROUNDS}.pt" for r in range(5)]


def test_a_torn_save_resumes_from_the_round_every_rank_committed(tmp_path, monkeypatch, unbroken):
    """dev2 (rank 3) dies after writing its round-2 checkpoint and before the commit; rank 1's round-2 file is
    gone too (it did not get that far): the marker still names round 1, which every rank holds, and the
    resumed run (here from Python: ``flexpl.simulate(..., resume=True)``) redoes round 2 (its row, already in
    rounds.csv, is rewritten) and ends as the unbroken run."""
    import flexpl

    out = tmp_path / "out"
    monkeypatch.setenv("FLEXPL_DIST_FAULT", "3:2:exit-before-commit")
    assert _run(str(_scenario(tmp_path)), "--out", str(out)) == 3
    monkeypatch.delenv("FLEXPL_DIST_FAULT")
    assert _committed(out) == 1
    assert rank_file(out, 3, 2).is_file()  # the newer save of the rank that died
    rank_file(out, 1, 2).unlink(missing_ok=True)
    assert all(rank_file(out, r, 1).is_file() for r in range(5))
    assert [r["round"] for r in _rows(out)] == ["1", "2"]  # row 2 was written before the commit
    with pytest.raises(flexpl.UserError, match="resume: give out"):
        flexpl.simulate(out / "config.yaml", resume=True)
    res = flexpl.simulate(out / "config.yaml", out=out, resume=True)
    _assert_as_unbroken(out, unbroken)
    assert [r["round"] for r in res.rounds] == list(range(1, ROUNDS + 1)) and res.summary["backend"] == "dist"


def test_resume_refuses_another_scenario_and_the_other_backends_checkpoint(tmp_path, capsys, unbroken):
    """One line, exit 2, nothing changed: another seed; a dist checkpoint under --backend sim; a simulator
    checkpoint under --backend dist."""
    before = {p.name: p.read_bytes() for p in [*unbroken.glob("*.*"), *(unbroken / "checkpoint").iterdir()]}

    def refused(args: list[str], text: str) -> None:
        capsys.readouterr()
        assert main(["run", *args, "--quiet"]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and text in err[0], err

    scn = str(unbroken.parent / "scn.yaml")
    refused([scn, "--set", "seed=5", "--backend", "dist", "--resume", str(unbroken)], "different scenario")
    refused(["--backend", "sim", "--resume", str(unbroken)], "resume it with --backend dist")
    assert before == {p.name: p.read_bytes() for p in [*unbroken.glob("*.*"), *(unbroken / "checkpoint").iterdir()]}
    sim = tmp_path / "sim"
    assert main(["run", "digits-star", "--set", "training.rounds=1", "--set", "training.max_steps_per_round=1",
                 "--out", str(sim), "--quiet"]) == 0
    refused(["--backend", "dist", "--resume", str(sim)], "resume it with --backend sim")


def test_a_fresh_run_removes_an_earlier_dist_checkpoint(tmp_path):
    """Else a later --resume could continue the earlier run's state beside the new run's rows."""
    from flexpl.io.results import begin_run

    (tmp_path / "checkpoint").mkdir()
    for name in ("rank0-round1.pt", "rank1-round2.pt", MARKER, ".rank0-round2.pt.tmp1234"):
        (tmp_path / "checkpoint" / name).write_text("x")
    begin_run(tmp_path, "0" * 64, resume=True)
    assert len(list((tmp_path / "checkpoint").iterdir())) == 4
    begin_run(tmp_path, "0" * 64)
    assert not (tmp_path / "checkpoint").exists()


def test_centralized_with_rank_0_killed_resumes_as_unbroken(tmp_path, capsys, monkeypatch):
    """centralized: the devices ship their samples to the server in round 1 only, so a resumed run rebuilds the
    server's union from the data set (rank 0 holds the other nodes' samples as shapes only). Rank 0 itself dies
    here, in round 2, and the run resumed from round 1 equals an unbroken one."""
    scn = digits_star(["training.rounds=2", "training.max_steps_per_round=2", "engine.backend=dist"],
                      strategy="centralized")
    write_yaml(tmp_path / "scn.yaml", scn.resolved())
    assert _run(str(tmp_path / "scn.yaml"), "--out", str(tmp_path / "ref")) == 0
    monkeypatch.setenv("FLEXPL_DIST_FAULT", "0:2:exit")
    capsys.readouterr()
    assert _run(str(tmp_path / "scn.yaml"), "--out", str(tmp_path / "out")) == 3
    monkeypatch.delenv("FLEXPL_DIST_FAULT")
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["flexpl: error: node 'server' (rank 0) stopped responding in round 2 (exited with code 17)"], err
    assert _committed(tmp_path / "out") == 1
    assert _run("--resume", str(tmp_path / "out")) == 0
    assert _rows(tmp_path / "out") == _rows(tmp_path / "ref")
    assert _summary(tmp_path / "out") == _summary(tmp_path / "ref")
