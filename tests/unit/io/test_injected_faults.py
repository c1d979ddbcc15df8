"""flexpl.io.injected_faults: the test-only fault hooks, off unless their variable is set, and strict about its form."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from flexpl.errors import UserError
from flexpl.io import injected_faults as faults


def test_kill_point_off_unless_set(monkeypatch):
    monkeypatch.delenv(faults.KILL_ENV, raising=False)
    assert faults.kill_point() is None
    faults.after_train_step(1, 1)  # nothing happens
    monkeypatch.setenv(faults.KILL_ENV, "3:2")
    assert faults.kill_point() == (3, 2)
    faults.after_train_step(3, 1)  # another step of that round: still alive
    faults.after_train_step(2, 2)


@pytest.mark.parametrize("raw", ["3", "a:b", "1:2:3"])
def test_a_malformed_kill_point_is_a_user_error(monkeypatch, raw):
    monkeypatch.setenv(faults.KILL_ENV, raw)
    with pytest.raises(UserError, match=f"{faults.KILL_ENV}: '{raw}' is not ROUND:STEP"):
        faults.kill_point()


def test_the_kill_hook_kills_at_its_step():
    code = "from flexpl.io import injected_faults as faults\nfaults.after_train_step(3, 1)\nprint('alive', flush=True)\n" \
           "faults.after_train_step(3, 2)\nprint('survived')\n"
    r = subprocess.run([sys.executable, "-c", code], env={"FLEXPL_TEST_KILL_AT": "3:2", "PATH": ""},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL and r.stdout == "alive\n", (r.returncode, r.stdout, r.stderr)


def _recorded(monkeypatch) -> list[tuple[str, float]]:
    calls: list[tuple[str, float]] = []
    monkeypatch.setattr(faults.time, "sleep", lambda s: calls.append(("sleep", s)))
    monkeypatch.setattr(faults.os, "_exit", lambda c: calls.append(("exit", c)))
    return calls


def test_dist_fault_off_unless_set_and_only_for_its_rank_and_round(monkeypatch):
    calls = _recorded(monkeypatch)
    monkeypatch.delenv(faults.DIST_ENV, raising=False)
    faults.dist_fault(0, 1.0)(1, "train")
    monkeypatch.setenv(faults.DIST_ENV, "3:2:exit")
    faults.dist_fault(2, 1.0)(2, "train")  # another rank
    hook = faults.dist_fault(3, 1.0)
    hook(1, "train")  # another round
    hook(2, "eval")  # exit happens at a training step
    assert calls == []
    hook(2, "train")
    assert calls == [("exit", 17)]


@pytest.mark.parametrize(("mode", "where", "expected"), [("hang", "train", ("sleep", 10**6)),
                                                         ("slow-eval", "eval", ("sleep", 1.5))])
def test_dist_fault_modes_that_wait(monkeypatch, mode, where, expected):
    calls = _recorded(monkeypatch)
    monkeypatch.setenv(faults.DIST_ENV, f"0:1:{mode}")
    faults.dist_fault(0, 0.5)(1, where)
    assert calls == [expected]


def test_dist_fault_raise(monkeypatch):
    monkeypatch.setenv(faults.DIST_ENV, "1:4:raise")
    with pytest.raises(RuntimeError, match=r"injected fault \(FLEXPL_DIST_FAULT\)"):
        faults.dist_fault(1, 1.0)(4, "train")


@pytest.mark.parametrize(("raw", "message"), [("1:2", "is not RANK:ROUND:MODE"), ("x:2:exit", "is not RANK:ROUND:MODE"),
                                              ("1:2:explode", "unknown mode 'explode'")])
def test_a_malformed_dist_fault_is_a_user_error(monkeypatch, raw, message):
    monkeypatch.setenv(faults.DIST_ENV, raw)
    with pytest.raises(UserError, match=f"{faults.DIST_ENV}: .*{message}"):
        faults.dist_fault(0, 1.0)


def test_the_engine_reads_no_fault_variable_itself():
    """Both variables are read only in flexpl.io.injected_faults (tests set them; nothing else may depend on them)."""
    from pathlib import Path

    import flexpl

    src = Path(flexpl.__file__).parent
    readers = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                     if p.name != "injected_faults.py" and any(v in p.read_text() for v in (faults.KILL_ENV, faults.DIST_ENV)))
    assert readers == []


def test_emulation_faults_are_for_their_rank_only_and_the_pickle_is_a_real_threat(monkeypatch, tmp_path):
    """The data-port tests' pickle would create its marker if anyone unpickled it, so their 'marker
    absent' can fail."""
    import pickle

    monkeypatch.setenv("FLEXPL_DIST_FAULT", "1:2:pickle-frame")
    assert faults.emulation_fault(1) == (2, "pickle-frame") and faults.emulation_fault(2) is None
    monkeypatch.setenv("FLEXPL_DIST_FAULT", "3:2:link-flap")
    assert faults.emulation_fault(3) == (2, "link-flap")
    faults.dist_fault(3, 1.0)(2, "train")  # not a training-step fault: nothing happens there
    monkeypatch.setenv("FLEXPL_DIST_FAULT", "3:2:exit")
    assert faults.emulation_fault(3) is None
    marker = tmp_path / "unpickled"
    monkeypatch.setenv("FLEXPL_DIST_FAULT_MARKER", str(marker))
    pickle.loads(faults.evil_pickle()).close()
    assert marker.exists()
