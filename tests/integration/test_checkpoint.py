"""Checkpoints: a run killed with SIGKILL mid-round and resumed ends bit-identical to one never stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import torch

from flexpl.cli import main


@pytest.fixture
def _flexpl(flexpl_forks):
    """``_flexpl(*ARGS, timeout=300, **env)``: ``flexpl ARGS`` in a process of its own (one torch thread, ``env``
    added), output captured; forked from a server that imported the package (tests/forkserver.py), so that each
    run, killed run and resume here is a fresh process without paying torch's import again."""

    def run(*args: str, timeout: int = 300, prelude: str = "", **env: str) -> subprocess.CompletedProcess:
        return flexpl_forks.completed(list(args), timeout=timeout, env=env, prelude=prelude)

    return run


SETS = ["--set", "training.rounds=4", "--set", "training.max_steps_per_round=6"]


def _summary(d: Path) -> dict:
    s = json.loads((d / "summary.json").read_text())
    s.pop("wall_s")
    return s


def _weights(d: Path) -> dict:
    return torch.load(d / "checkpoint.pt", weights_only=True)["engine"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy, executor", [("fl", "auto"), ("fpl", "auto"), ("sl", "auto"),
                                                ("fl", "processes"), ("fpl", "processes")])
def test_kill_9_mid_round_then_resume_is_bit_identical(tmp_path, _flexpl, strategy, executor):
    """Also with worker processes: the killed run's workers exit with it; the resumed run forks new ones."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    SETS = [*globals()["SETS"], "--set", f"engine.executor={executor}"]
    # both runs in processes of their own: same thread count, so the same float arithmetic
    r = _flexpl("run", "digits-star", *SETS, "--strategy", strategy, "--out", str(ref), "--quiet")
    assert r.returncode == 0, r.stderr
    # SIGKILL after step 4 of round 3
    r = _flexpl("run", "digits-star", *SETS, "--strategy", strategy, "--out", str(cut), "--quiet",
                FLEXPL_TEST_KILL_AT="3:4")
    assert r.returncode == -signal.SIGKILL
    assert not (cut / "summary.json").exists()
    assert len((cut / "rounds.csv").read_text().strip().splitlines()) == 1 + 2  # rounds 1-2 survived
    r = _flexpl("run", "--resume", str(cut), "--quiet")
    assert r.returncode == 0, r.stderr
    assert _summary(cut) == _summary(ref)
    assert (cut / "rounds.csv").read_text() == (ref / "rounds.csv").read_text()
    for name in ("rounds_nodes.csv", "rounds_links.csv"):  # each round once: the killed round's rows not twice
        assert (cut / name).read_text() == (ref / name).read_text(), name
    _assert_same_state(_weights(ref), _weights(cut))


def _assert_same_state(a: dict, b: dict) -> None:
    """Two saved engine states hold the same tensors (replicas where saved, and the aggregators' models)."""
    for ra, rb in zip(a["replicas"], b["replicas"], strict=True):
        for x, y in zip(ra, rb, strict=True):
            assert (x["module"] is None) == (y["module"] is None)
            for k in x["module"] or {}:
                assert torch.equal(x["module"][k], y["module"][k])
    assert a["global"].keys() == b["global"].keys()
    for s in a["global"]:
        for k in a["global"][s]:
            assert torch.equal(a["global"][s][k], b["global"][s][k])


def test_resume_refuses_another_scenario(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "digits-star", "--set", "training.rounds=1", "--out", str(out), "--quiet"]) == 0
    code = main(["run", "digits-star", "--set", "training.rounds=1", "--set", "seed=5", "--resume", str(out),
                 "--quiet"])
    assert code == 2 and "different scenario" in capsys.readouterr().err


def test_truncated_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "digits-star", "--set", "training.rounds=1", "--out", str(out), "--quiet"]) == 0
    ck = out / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:200])
    before = (out / "summary.json").read_text()
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "corrupted" in err and len(err.strip().splitlines()) == 1
    assert (out / "summary.json").read_text() == before


def test_checkpoint_loads_without_pickle_and_leaves_no_temporary_files(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "digits-star", "--set", "training.rounds=2", "--out", str(out), "--quiet"]) == 0
    blob = torch.load(out / "checkpoint.pt", weights_only=True)
    assert blob["round"] == 2 and blob["scenario_sha256"] == json.loads((out / "summary.json").read_text())[
        "scenario_sha256"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# Runs flexpl with os.fsync SIGKILLing the process while it writes a new checkpoint: the new
# bytes are written (to wherever the writer puts them) but never renamed into place.
_KILL_IN_CHECKPOINT_WRITE = """
import os, signal
real_fsync = os.fsync
def fsync(fd):
    if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).lstrip(".").startswith("checkpoint.pt"):
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)
os.fsync = fsync
"""


@pytest.mark.slow
def test_kill_9_while_writing_a_checkpoint_keeps_the_previous_one_whole(tmp_path, _flexpl):
    out = tmp_path / "run"
    sets = ["--set", "training.rounds=2", "--set", "training.max_steps_per_round=2"]
    r = _flexpl("run", "digits-star", *sets, "--out", str(out), "--quiet", FLEXPL_TEST_KILL_AT="2:1")
    assert r.returncode == -signal.SIGKILL, r.stderr
    before = (out / "checkpoint.pt").read_bytes()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["round"] == 1
    # resume: round 2 runs, and the process dies in the middle of saving its checkpoint
    r = _flexpl("run", "--resume", str(out), "--quiet", prelude=_KILL_IN_CHECKPOINT_WRITE)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (out / "checkpoint.pt").read_bytes() == before  # the old checkpoint, byte for byte
    assert not (out / "summary.json").exists()
    # and the run still resumes from it and finishes
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["rounds"] == 2
    assert torch.load(out / "checkpoint.pt", weights_only=True)["round"] == 2


def test_checkpoint_holds_only_the_state_the_next_round_reads(tmp_path):
    """FedAvg clients are overwritten by the next download: their weights and (reset) optimizers are not saved;
    unsynced FPL fronts, non-reset optimizers and syncs every 2 rounds keep theirs."""
    one = ["--set", "training.rounds=1", "--set", "training.max_steps_per_round=2", "--quiet"]

    def saved(name: str, *extra: str) -> list[list[dict]]:
        assert main(["run", "digits-star", *one, *extra, "--out", str(tmp_path / name)]) == 0
        return torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["engine"]["replicas"]

    fl = saved("fl", "--strategy", "fl")
    assert len(fl[0]) > 1 and all(r["module"] is None and r["opt"] is None for r in fl[0])
    kept_opt = saved("fl-opt", "--strategy", "fl", "--set", "training.optimizer.reset_on_sync=false")
    assert all(r["module"] is None and r["opt"] is not None for r in kept_opt[0])
    fpl = saved("fpl", "--strategy", "fpl")
    assert len(fpl[0]) > 1 and all(r["module"] is not None and r["opt"] is not None for r in fpl[0])
    # fronts averaged every 2 rounds: a front that sits out a round still trains on its own weights later
    every2 = saved("fpl-sync2", "--strategy", "fpl", "--set", "plan.front_sync=all", "--set",
                   "plan.front_sync_every=2")
    assert all(r["module"] is not None for r in every2[0])
    every1 = saved("fpl-sync1", "--strategy", "fpl", "--set", "plan.front_sync=all")
    assert all(r["module"] is None for r in every1[0])


@pytest.mark.slow
def test_mlp_1000_kill_9_after_round_1_then_resume_is_bit_identical(tmp_path, _flexpl):
    """1,000 FedAvg clients: the checkpoint holds the global model only, and resuming from it is exact."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    sets = ["--set", "data.max_train=3000", "--set", "data.partition.kind=iid", "--set", "training.rounds=2"]
    r = _flexpl("run", "mlp-1000", *sets, "--out", str(ref), "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr
    r = _flexpl("run", "mlp-1000", *sets, "--out", str(cut), "--quiet", timeout=600, FLEXPL_TEST_KILL_AT="2:1")
    assert r.returncode == -signal.SIGKILL
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["round"] == 1
    r = _flexpl("run", "--resume", str(cut), "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr
    assert _summary(cut) == _summary(ref)
    assert (cut / "rounds.csv").read_text() == (ref / "rounds.csv").read_text()
    a, b = _weights(ref), _weights(cut)
    assert len(a["replicas"][0]) == 1000 and all(r["module"] is None for r in a["replicas"][0])
    _assert_same_state(a, b)
    assert (ref / "checkpoint.pt").stat().st_size < 10_000_000  # the global MLP (~0.8 MB), not 1,000 replicas


def test_checkpoints_are_written_in_the_background_from_a_snapshot(tmp_path, monkeypatch):
    """The training thread goes on while a checkpoint is written (the write blocks until the round's row is out),
    the written state is the one at the save (changing the model afterwards does not reach it), and the run
    waits for the last write before it returns."""
    from flexpl.config.scenario import load_scenario
    from flexpl.sim import checkpoint
    from flexpl.sim.simulator import run, setup

    scn = load_scenario("digits-star", sets=["training.rounds=2", "training.max_steps_per_round=2"])
    st = setup(scn)
    released = {1: threading.Event(), 2: threading.Event()}
    written: list[dict] = []
    real_write = checkpoint.write_blob

    def blocked_write(path: Path, blob: dict) -> None:
        if not released[blob["round"]].wait(60):  # a synchronous save would never get here in time
            raise RuntimeError("the checkpoint was written on the training thread")
        written.append(blob)
        real_write(path, blob)

    monkeypatch.setattr(checkpoint, "write_blob", blocked_write)
    seen, at_save = [], {}

    def on_round(row: dict) -> None:
        rnd = row["round"]
        # the save of this round has returned, and its write has not happened yet
        seen.append((rnd, [b["round"] for b in written]))
        at_save[rnd] = {s: {k: v.clone() for k, v in m.state_dict().items()} for s, m in st.engine.global_.items()}
        with torch.no_grad():  # the next round (here: this) changes the model while the write waits
            for m in st.engine.global_.values():
                for p in m.parameters():
                    p.add_(1.0)
        released[rnd].set()

    run(scn, on_round=on_round, st=st, checkpoint_dir=tmp_path)
    assert seen == [(1, []), (2, [1])]  # round 2's save waited for round 1's write, not for its own
    assert [b["round"] for b in written] == [1, 2]  # the run returned after the last write
    for blob in written:
        for s, sd in blob["engine"]["global"].items():
            for k, v in sd.items():
                assert torch.equal(v, at_save[blob["round"]][int(s)][k])
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["round"] == 2


def test_a_failed_checkpoint_write_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from flexpl.sim import checkpoint

    def full_disk(path: Path, blob: dict) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_blob", full_disk)
    out = tmp_path / "run"
    assert main(["run", "digits-star", "--set", "training.rounds=2", "--set", "training.max_steps_per_round=2",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint" in err and "No space left on device" in err
    assert not (out / "summary.json").exists() and not (out / "checkpoint.pt").exists()
    assert len((out / "rounds.csv").read_text().strip().splitlines()) == 1 + 1  # it stopped at round 2's save


# Runs flexpl with the background write of round 2's checkpoint SIGKILLing the process once the
# training thread has written round 2's row: the checkpoint is round 1's, rounds.csv has rows 1-2.
_KILL_IN_BACKGROUND_WRITE = """
import os, signal, time
from flexpl.sim import checkpoint
real = checkpoint.write_blob
def write(path, blob):
    if blob["round"] == 2:
        rows = path.parent / "rounds.csv"
        while not (rows.exists() and len(rows.read_text().strip().splitlines()) == 3):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, blob)
checkpoint.write_blob = write
"""


@pytest.mark.slow
def test_kill_9_during_a_background_write_then_resume_is_bit_identical(tmp_path, _flexpl):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    sets = ["--set", "training.rounds=3", "--set", "training.max_steps_per_round=4", "--strategy", "fpl"]
    r = _flexpl("run", "digits-star", *sets, "--out", str(ref), "--quiet")
    assert r.returncode == 0, r.stderr
    r = _flexpl("run", "digits-star", *sets, "--out", str(cut), "--quiet", prelude=_KILL_IN_BACKGROUND_WRITE)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["round"] == 1
    assert len((cut / "rounds.csv").read_text().strip().splitlines()) == 1 + 2  # row 2 is ahead of the checkpoint
    r = _flexpl("run", "--resume", str(cut), "--quiet")
    assert r.returncode == 0, r.stderr
    assert _summary(cut) == _summary(ref)
    assert (cut / "rounds.csv").read_text() == (ref / "rounds.csv").read_text()
    _assert_same_state(_weights(ref), _weights(cut))
