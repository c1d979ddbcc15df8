"""A full disk and a read-only one: the results folder on a small tmpfs (root only; skipped elsewhere).

The disk fills just before a chosen write (a checkpoint, a rounds.csv rewrite, summary.json):
the run stops with one line naming the file and the bytes it needs (exit 2), the previous
checkpoint and rows are intact, and ``--resume`` after space is freed ends bit-identical to a
run never stopped. A read-only ``--out`` is refused in one line before any training.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import flexpl.io.results as results
import flexpl.sim.checkpoint as checkpoint
from flexpl.cli import main

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
QUICK = ["digits-star", "--quiet", "--set", "training.rounds=4", "--set", "training.max_steps_per_round=2"]


@pytest.fixture
def tmpfs(tmp_path):
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _fill(folder: Path) -> Path:
    """Take every free byte of ``folder``'s file system; returns the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 512, 1):  # unbuffered: every byte that fits is taken
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _rows(d: Path) -> list[dict]:
    with open(d / "rounds.csv") as f:
        return list(csv.DictReader(f))


def _summary(d: Path) -> dict:
    s = json.loads((d / "summary.json").read_text())
    s.pop("wall_s", None)
    return s


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    d = tmp_path_factory.mktemp("unbroken") / "run"
    assert main(["run", *QUICK, "--out", str(d)]) == 0
    return d


@pytest.mark.parametrize("target, nth", [("checkpoint.pt", 2), ("rounds.csv", 3), ("summary.json", 1)])
def test_a_disk_that_fills_loses_nothing_and_resume_is_bit_identical(tmpfs, unbroken, capsys, monkeypatch,
                                                                      target, nth):
    out = tmpfs / "run"
    real = results.atomic_write
    seen = {"n": 0, "filler": None}

    def filling(path, data):
        if Path(path).name == target:
            seen["n"] += 1
            if seen["n"] == nth and seen["filler"] is None:
                # a checkpoint still being written in the background finishes first (it may rename a newer
                # checkpoint into place at any moment; it is the round's, not something lost or changed)
                if target != "checkpoint.pt":
                    checkpoint.drain()
                seen["filler"] = _fill(tmpfs)
                seen["before"] = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
        return real(path, data)

    monkeypatch.setattr(results, "atomic_write", filling)
    monkeypatch.setattr(checkpoint, "atomic_write", filling)
    assert main(["run", *QUICK, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    # the checkpoint is written in the background: the next round's rounds.csv may meet the full disk first
    # (or the next round's rows appended to rounds_nodes.csv / rounds_links.csv)
    named = [target, "rounds.csv", *results.ROUND_BILL_FILES] if target == "checkpoint.pt" else [target]
    assert len(err.splitlines()) == 1 and any(f"{out / n}'" in err for n in named) and "bytes needed" in err, err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
    for name, data in seen["before"].items():  # nothing already written is lost or changed
        if name in results.ROUND_BILL_FILES:  # appended, not rewritten: whole rounds may have been added
            assert after.get(name, b"").startswith(data) and after[name].endswith(b"\n"), name
        else:
            assert after.get(name) == data, name
    assert not (out / "summary.json").exists()
    if (out / "checkpoint.pt").exists():  # the previous checkpoint still loads
        blob = torch.load(out / "checkpoint.pt", weights_only=True)
        assert abs(len(blob["rows"]) - len(_rows(out))) <= 1  # rows go first, the checkpoint after (or failed)
    monkeypatch.undo()
    seen["filler"].unlink()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert _summary(out) == _summary(unbroken)
    ref = torch.load(unbroken / "checkpoint.pt", weights_only=True)["engine"]
    got = torch.load(out / "checkpoint.pt", weights_only=True)["engine"]
    assert _same(ref, got)  # every weight and optimizer tensor bit-identical
    assert [{k: v for k, v in r.items() if "wall" not in k} for r in _rows(out)] == [
        {k: v for k, v in r.items() if "wall" not in k} for r in _rows(unbroken)]
    for name in results.ROUND_BILL_FILES:  # every round once, byte for byte as the unbroken run's
        assert (out / name).read_bytes() == (unbroken / name).read_bytes(), name


def test_a_read_only_out_is_refused_before_training(tmpfs, capsys, monkeypatch):
    import flexpl.sim.simulator as simulator

    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    monkeypatch.setattr(simulator, "run", lambda *a, **k: pytest.fail("trained into a read-only folder"))
    for sub in ("new", ""):
        assert main(["run", *QUICK, "--out", str(tmpfs / sub) if sub else str(tmpfs)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--out" in err and ("not writable" in err or "Read-only" in err), err
