"""``flexpl sweep --ray`` and ``flexpl plan --validate K --ray`` against the local paths, on a local Ray.

The tests marked ``ray`` need the optional extra (``pip install 'flexpl[ray]'``). ``make test``
and ``make test-ray`` install it and set ``FLEXPL_REQUIRE_RAY=1``, so that there a missing Ray
fails these tests instead of skipping them; elsewhere they are skipped without Ray. The
bad-input tests at the end need no Ray.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flexpl import cli
from flexpl import planner as P
from flexpl.errors import UserError
from flexpl.studies import ray_tasks as ray_exec
from flexpl.studies import sweep
from flexpl.studies.validate_plans import validate
from tests.conftest import digits_star, flexpl_err

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY and not os.environ.get("FLEXPL_REQUIRE_RAY"),
                               reason="Ray not installed (pip install 'flexpl[ray]'; make test-ray)")

SETS = ["--set", "training.rounds=1", "--set", "data.partition.kind=dirichlet"]
GRID = ["--grid", "strategy=fl,fpl", "--grid", "data.partition.alpha=0.1,1.0"]
# wall_s is this run's wall-clock time: the only column that may differ between two runs
VOLATILE = {"wall_s"}


def rows_of(path: Path) -> list[dict[str, str]]:
    """sweep.csv without its wall-clock column."""
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in VOLATILE} for r in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.ray
@needs_ray
def test_ray_sweep_writes_the_same_sweep_csv_as_the_local_path(tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert cli.main(["sweep", "digits-star", *SETS, *GRID, "--out", str(local), "--quiet"]) == 0
    assert cli.main(["sweep", "digits-star", *SETS, *GRID, "--ray", "--jobs", "2", "--out", str(remote),
                     "--quiet"]) == 0
    want = rows_of(local / "sweep.csv")
    assert len(want) == 4 and all(r["final_accuracy"] for r in want)
    # every cost column and the accuracy, cell by cell, equal to the last digit
    assert rows_of(remote / "sweep.csv") == want
    for r in want:  # one folder per cell, as without Ray
        assert (remote / r["cell"] / "rounds.csv").is_file()
        assert json.loads((remote / r["cell"] / "summary.json").read_text())["scenario_sha256"] \
            == r["scenario_sha256"]
    assert (remote / "report.html").is_file()


LONG_CELLS = ["--set", "training.rounds=2", "--set", "training.local_epochs=100"]


@pytest.mark.slow
@pytest.mark.ray
@needs_ray
def test_interrupted_ray_sweep_resumes_reusing_finished_cells(tmp_path):
    """Ctrl-C a Ray sweep after its first cell; the rerun keeps that cell and runs only the rest."""
    out = tmp_path / "sw"
    # one CPU: the cells run one after another, so the interrupt lands after some, before all; 100 local
    # epochs make a cell take seconds (2 rounds of 1 epoch take 0.07 s: the rest could finish before Ctrl-C)
    argv = [str(Path(sys.executable).parent / "flexpl"), "sweep", "digits-star", *LONG_CELLS,
            "--grid", "strategy=fl,fpl,sfl", "--ray", "--jobs", "1", "--out", str(out), "--quiet"]
    # SIGINT as at a terminal: a shell without job control starts background commands (a CI script run
    # with `&`) with SIGINT ignored, which the child would inherit and so never see the Ctrl-C
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "strategy=fl" / "summary.json").is_file():
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the sweep ended before it could be interrupted: {proc.stderr.read()}"
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
        assert rc == 130, f"exit {rc}: {proc.stderr.read()[-2000:]}"  # flexpl: interrupted (and the local Ray shut down)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = out / "strategy=fl" / "summary.json"
    kept = (first.stat().st_mtime_ns, first.read_text())
    interrupted = [n for n in ("strategy=fpl", "strategy=sfl") if not (out / n / "summary.json").is_file()]
    assert interrupted, "every cell had finished: nothing left to resume"

    seen: dict[str, bool] = {}
    sweep.run_sweep("digits-star", LONG_CELLS[1::2], ["strategy=fl,fpl,sfl"], None, out, quiet=True,
                    ray="", ray_cpus=2, on_cell=lambda c, s: seen.__setitem__(c.name, s is not None))
    assert seen["strategy=fl"] is False  # reused, not rerun
    assert all(seen[n] for n in interrupted)  # the unfinished cells ran
    assert (first.stat().st_mtime_ns, first.read_text()) == kept
    rows = rows_of(out / "sweep.csv")
    assert [r["cell"] for r in rows] == ["strategy=fl", "strategy=fpl", "strategy=sfl"]
    assert all(r["rounds_completed"] == "2" for r in rows)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the tests below (flexpl uses a Ray already started, and leaves it)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # (no Ray log lines in capsys)
    yield ray
    ray.shutdown()


@pytest.mark.ray
@needs_ray
def test_a_cell_asking_more_cpus_than_any_node_has_is_a_user_error(local_ray, tmp_path):
    """engine.workers is a cell's CPU request: 3 on a 2-CPU Ray would wait forever, so it is refused."""
    with pytest.raises(UserError, match=r"sweep cell strategy=fl: asks for 3 CPUs .*largest Ray node has 2"):
        sweep.run_sweep("digits-star", ["training.rounds=1", "engine.workers=3"], ["strategy=fl"], None,
                        tmp_path / "sw", quiet=True, ray="")
    assert local_ray.is_initialized()  # a Ray started by the caller is left running


@pytest.mark.slow
@pytest.mark.ray
@needs_ray
def test_plan_validate_through_ray_matches_the_local_path(local_ray):
    scn = digits_star(["training.rounds=2"])

    class Quiet:
        def print(self, *a, **k) -> None:
            pass

    results = []
    for ray in (None, ""):
        planner, cands, rows, _ = P.plan_scenario(scn, [], "energy")
        validate(scn, planner, {c.label: c for c in cands}, rows, 3, Quiet(), ray=ray, ray_cpus=2)
        results.append([(r["plan"], r["accuracy"], r["validated_rounds"]) for r in rows])
    local, remote = results
    assert sum(acc is not None for _, acc, _ in local) == 3
    assert remote == local


@pytest.mark.slow
@pytest.mark.ray
@needs_ray
def test_pilots_and_validation_to_a_target_through_ray_match_the_local_path(local_ray):
    """``flexpl plan --target-accuracy A --validate K --ray``: each rung's pilots and each validated plan as
    Ray tasks give the local path's accuracies, rungs and measured rounds, bytes and energy to A."""
    from flexpl.studies.pilots import default_budget, run_pilots

    scn = digits_star(["training.rounds=4"])
    planner, cands, rows, _ = P.plan_scenario(scn, [], "energy")
    keep = {"centralized", "fl every=2", "sl cut=1", "fpl cut=1 trunk@server"}  # 4 classes, as test_pilots
    rows = [r for r in rows if r["plan"] in keep]
    by_label = {c.label: c for c in cands if c.label in keep}

    class Quiet:
        def print(self, *a, **k) -> None:
            pass

    got = []
    for ray in (None, ""):
        p = run_pilots(scn, planner, by_label, rows, default_budget(4, 4), ray=ray)
        vrows = [{**r, "feasible": True} for r in rows]
        validate(scn, planner, by_label, vrows, 2, Quiet(), ray=ray, ray_cpus=2, targets=[0.5, 0.999])
        measured = [{k: v for k, v in r.items() if k.startswith("measured_") or k in ("accuracy", "validated_rounds")}
                    for r in vrows[:2]]
        got.append((p.accuracy, p.rungs, p.rounds_trained, p.representative, measured))
    local, remote = got
    assert local[1] == [(2, 4), (4, 2)] and sorted(len(a) for a in local[0].values()) == [2, 2, 4, 4]
    assert any(m["measured_round_0.5"] for m in local[4]) and all(m["measured_round_0.999"] is None
                                                                  for m in local[4])
    assert remote == local


@pytest.mark.slow
@pytest.mark.ray
@needs_ray
def test_ray_compare_writes_the_same_comparison_csv_as_the_local_path(local_ray, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    argv = ["compare", "digits-star", "--set", "training.rounds=1", "--strategies", "fl,fpl", "--quiet"]
    assert cli.main([*argv, "--out", str(local)]) == 0
    assert cli.main([*argv, "--ray", "--out", str(remote)]) == 0
    want = rows_of(local / "comparison.csv")
    assert [r["strategy"] for r in want] == ["fl", "fpl"] and all(r["final_accuracy"] for r in want)
    assert rows_of(remote / "comparison.csv") == want  # every cost column and the accuracy, to the last digit
    for s in ("fl", "fpl"):  # one folder per strategy, as without Ray
        assert (remote / s / "rounds.csv").read_text() == (local / s / "rounds.csv").read_text()
    assert local_ray.is_initialized()  # a Ray started by the caller is left running


# ------------------------------------------------------------------ bad input: no Ray needed


def test_a_task_runs_with_its_cpus_and_returns_user_errors_as_values(monkeypatch):
    """What runs inside a Ray worker, called here: torch threads and the run-worker cap follow the request."""
    import torch

    from flexpl.sim.exec.policy import WORKERS_ENV

    monkeypatch.setenv(WORKERS_ENV, "7")
    threads = torch.get_num_threads()
    try:
        assert ray_exec._in_worker(lambda x: (x, os.environ[WORKERS_ENV], torch.get_num_threads()), 2, "a") \
            == ("ok", ("a", "2", 2))

        def bad() -> None:
            raise UserError("training.rounds: must be positive")

        assert ray_exec._in_worker(bad, 1) == ("user_error", "training.rounds: must be positive")
    finally:
        torch.set_num_threads(threads)


class _FakeRay:
    """Enough of the ``ray`` module for :func:`ray_exec.run_tasks`: tasks finish in order, one per wait;
    the wait after ``interrupt_after`` results raises KeyboardInterrupt (Ctrl-C), as ``ray.wait`` does."""

    def __init__(self, finished_at_interrupt: int, interrupt_after: int) -> None:
        self.cancelled: list[int] = []
        self.options: dict = {}
        self.refs: list[int] = []
        self.finished_at_interrupt, self.interrupt_after, self.got = finished_at_interrupt, interrupt_after, 0

    def nodes(self) -> list[dict]:
        return [{"Alive": True, "Resources": {"CPU": 2.0}}]

    def remote(self, fn):
        fake = self

        class Remote:
            def options(self, **kw):
                fake.options = kw
                return self

            def remote(self, *args):
                fake.refs.append(len(fake.refs))
                return fake.refs[-1]
        return Remote()

    def wait(self, refs, num_returns=1, timeout=None):
        if timeout == 0:  # after Ctrl-C: which of ``refs`` have finished meanwhile
            done = [r for r in refs if r < self.finished_at_interrupt]
            return done, [r for r in refs if r not in done]
        if self.got == self.interrupt_after:
            raise KeyboardInterrupt
        return [refs[0]], refs[1:]

    def get(self, ref):
        self.got += 1
        return "ok", ref

    def cancel(self, ref, force=False):
        self.cancelled.append(ref)


@pytest.mark.parametrize("owned", [True, False])
def test_ctrl_c_cancels_only_on_a_ray_we_do_not_shut_down(owned, monkeypatch):
    """Ctrl-C after the first of four tasks: a Ray this run started is shut down without any cancel
    (cancelling a task as its reply arrives aborts Ray's driver); on a Ray that stays up, the tasks
    that had not finished are cancelled, and the one that finished meanwhile is not."""
    fake = _FakeRay(finished_at_interrupt=2, interrupt_after=1)
    monkeypatch.setattr(ray_exec, "_owned", [owned])
    killed: list[bool] = []
    monkeypatch.setattr(ray_exec, "_kill_local_tasks", lambda: killed.append(True))
    got: list[int] = []
    tasks = [ray_exec.Task(k, print, (), 1) for k in range(4)]
    with pytest.raises(KeyboardInterrupt):
        ray_exec.run_tasks(fake, tasks, lambda key, value: got.append(key))
    assert got == [0]
    assert fake.cancelled == ([] if owned else [2, 3])
    assert killed == ([True] if owned else [])  # our own Ray: its workers running our tasks are killed instead
    assert fake.options == ({"num_cpus": 1, "max_retries": 0} if owned else {"num_cpus": 1})  # and never retried


def test_ray_missing_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as where it is not installed
    assert cli.main(["sweep", "digits-star", *GRID, "--ray", "--out", str(tmp_path / "sw"), "--quiet"]) == 2
    err = flexpl_err(capsys)
    assert len(err.splitlines()) == 1 and "--ray" in err and "flexpl[ray]" in err
    assert not (tmp_path / "sw").exists()  # said before any work
    assert cli.main(["plan", "digits-star", "--validate", "1", "--ray", "--out", str(tmp_path / "p")]) == 2
    err = flexpl_err(capsys)
    assert len(err.splitlines()) == 1 and "flexpl[ray]" in err
    assert cli.main(["compare", "digits-star", "--ray", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    err = flexpl_err(capsys)
    assert len(err.splitlines()) == 1 and "flexpl[ray]" in err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("argv,fragment", [
    (["sweep", "digits-star", *GRID, "--ray", "not an address"], "is not a Ray address"),
    (["sweep", "digits-star", *GRID, "--ray", "10.0.0.1:6379", "--jobs", "2"], "--jobs: with --ray ADDRESS"),
    (["sweep", "digits-star", *GRID, "--ray", "--jobs", "0"], "--jobs: must be at least 1"),
    (["plan", "digits-star", "--ray"], "--ray: only --target-accuracy's pilots and --validate K"),
    (["compare", "digits-star", "--ray", "not an address"], "is not a Ray address"),
    (["compare", "digits-star", "--jobs", "2"], "--jobs sizes the local Ray of --ray"),
])
def test_bad_ray_options_are_one_line_errors(argv, fragment, tmp_path, capsys):
    assert cli.main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = flexpl_err(capsys)
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.ray
@needs_ray
def test_unreachable_address_is_a_one_line_error_not_minutes_of_retries(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main(["sweep", "digits-star", *GRID, "--ray", f"127.0.0.1:{port}", "--out", str(tmp_path / "o"),
                     "--quiet"]) == 2
    err = flexpl_err(capsys)
    assert len(err.splitlines()) == 1 and f"--ray 127.0.0.1:{port}: cannot reach" in err
    assert cli.main(["compare", "digits-star", "--ray", f"127.0.0.1:{port}", "--out", str(tmp_path / "c"),
                     "--quiet"]) == 2
    err = flexpl_err(capsys)
    assert len(err.splitlines()) == 1 and f"--ray 127.0.0.1:{port}: cannot reach" in err
    assert not (tmp_path / "c").exists()


def test_address_forms():
    for ok in ("", "auto", "local", "127.0.0.1:6379", "head-node:6379", "ray://head:10001"):
        ray_exec.check_address(ok)
    for bad in ("digits-star", "edge.yaml", "6379", "http://x:1 y"):
        with pytest.raises(UserError, match="not a Ray address"):
            ray_exec.check_address(bad)
