"""Two commands, one folder: a live holder's folder is refused in one line naming its pid; a dead one's is taken."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flexpl.cli import main
from flexpl.io.lock import LOCK_NAME, hold_folder

ENV = dict(os.environ, OMP_NUM_THREADS="1")
QUICK = ["--quiet", "--set", "training.rounds=1", "--set", "training.max_steps_per_round=2"]
HOLD = ("import sys, time; from flexpl.io.lock import hold_folder\n"
        "with hold_folder(sys.argv[1], 'flexpl run'):\n    print('held', flush=True); time.sleep(120)\n")


def _listing(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*")}


def _wait_for_pid(lock: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if lock.exists() and lock.read_text().split()[:1] == [str(proc.pid)]:
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "holder exited"
        time.sleep(0.05)
    raise AssertionError("the first command never took the lock")


@pytest.mark.parametrize("command", [["run", "digits-star"], ["compare", "digits-star", "--strategies", "fl"],
                                     ["sweep", "digits-star", "--grid", "strategy=fl"]])
def test_a_held_folder_is_refused_in_one_line_naming_the_pid(tmp_path, capsys, command):
    out = tmp_path / "res"
    out.mkdir()
    (out / "rounds.csv").write_text("round\n1\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_pid(out / LOCK_NAME, holder)
        before = _listing(out)
        assert main([*command, "--out", str(out), *QUICK]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"pid {holder.pid}" in err and "in use" in err, err
        assert _listing(out) == before  # nothing written, nothing removed
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holders_lock_is_taken_over_after_kill_9(tmp_path, capsys):
    out = tmp_path / "res"
    first = subprocess.Popen([sys.executable, "-m", "flexpl.cli", "run", "digits-star", "--out", str(out), "--quiet",
                              "--set", "training.rounds=500"], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_pid(out / LOCK_NAME, first)
        assert main(["run", "digits-star", "--out", str(out), *QUICK]) == 2
        assert f"pid {first.pid}" in capsys.readouterr().err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / LOCK_NAME).exists()  # left behind by the killed run, with its pid in it
    assert main(["run", "digits-star", "--out", str(out), *QUICK]) == 0
    assert (out / "summary.json").exists() and not (out / LOCK_NAME).exists()


def test_the_lock_leaves_nothing_when_nothing_was_written(tmp_path):
    with hold_folder(tmp_path / "new", "flexpl run") as d:
        assert (d / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / "new").exists()
    with hold_folder(tmp_path / "kept", "flexpl run") as d:
        (d / "summary.json").write_text("{}")
    assert sorted(os.listdir(tmp_path / "kept")) == ["summary.json"]


def test_one_cell_of_a_sweep_never_runs_twice_at_once(tmp_path, capsys):
    out = tmp_path / "sw"
    (out / "strategy=fl").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / "strategy=fl")], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_pid(out / "strategy=fl" / LOCK_NAME, holder)
        assert main(["sweep", "digits-star", "--grid", "strategy=fl", "--out", str(out), *QUICK]) == 2
        err = capsys.readouterr().err.strip()
        assert "sweep cell strategy=fl" in err and f"pid {holder.pid}" in err, err
    finally:
        holder.kill()
        holder.wait()
