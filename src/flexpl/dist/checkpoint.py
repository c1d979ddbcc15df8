"""Checkpoints of a distributed run: a file per rank and round, and a commit marker that names the round to resume.

[Note: dist checkpoints] Every ``training.checkpoint_every`` rounds each rank saves what it
holds with the simulator's own :func:`flexpl.sim.checkpoint.save`: its real replicas, the
aggregators' models it hosts, optimizer state, torch's RNG state, the cost counters, rows and
last evaluation (identical on every rank), and its measured byte counters. Replicas of other
ranks are meta twins (see [Note: meta replicas]) and are saved as such: shapes only, no
bytes. The file is ``OUT/checkpoint/rank<R>-round<N>.pt``, written in the foreground.

A kill can stop rank A after it saved round N and rank B before, so a file alone says
nothing about the others. The round every rank holds is named by rank 0's commit marker,
``OUT/checkpoint/committed.json`` (round and scenario digest): after the round's row is in
rounds.csv, every rank reports to rank 0 that its file is written, rank 0 writes the marker
(atomically), then releases the others, and only then does each rank delete its files of
earlier rounds. So at any moment the marker's round is saved by every rank (at most two
generations per rank on disk: the committed one and a newer one not yet committed), and
``--resume`` loads exactly that round everywhere, ignoring a newer file of a torn save.
Rank 0 reads the marker and sends its round to the others, so ranks on other machines
(torchrun) only need their own files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexpl.errors import UserError
from flexpl.io.results import write_json
from flexpl.sim import checkpoint

if TYPE_CHECKING:  # heavy imports stay inside the functions
    from flexpl.dist.transport import Comm

FOLDER = checkpoint.DIST_FOLDER
MARKER = "committed.json"
_FILE = re.compile(r"rank(\d+)-round(\d+)\.pt")


def rank_file(out: Path, rank: int, round_index: int) -> Path:
    """``OUT/checkpoint/rank<R>-round<N>.pt``: the checkpoint of ``rank`` after round ``round_index``."""
    return Path(out) / FOLDER / f"rank{rank}-round{round_index}.pt"


def committed_round(out: Path, scenario_sha256: str) -> int:
    """The round every rank has saved (rank 0's marker), checked against the scenario; one-line errors otherwise."""
    out = Path(out)
    marker = out / FOLDER / MARKER
    if not marker.is_file():
        if (out / checkpoint.FILENAME).is_file():
            raise UserError(f"--resume: '{out}' holds a simulator checkpoint ({checkpoint.FILENAME}), not one of the "
                            "dist backend; resume it with --backend sim")
        raise UserError(f"--resume: no checkpoint of the dist backend in '{out}' (expected {FOLDER}/{MARKER}); "
                        "start the run without --resume")
    try:
        data = json.loads(marker.read_text())
        rnd, sha = int(data["round"]), str(data["scenario_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"--resume: '{marker}' is corrupted or not a FlexPL commit marker; delete "
                        f"'{out / FOLDER}' and rerun from the start") from None
    if sha != scenario_sha256:
        raise UserError(f"--resume: checkpoint '{out / FOLDER}' was written by a different scenario "
                        f"({sha[:12]} vs {scenario_sha256[:12]}); resume with the same scenario and --set options, "
                        "or use another --out")
    return rnd


def check_resume(out: Path, scenario_sha256: str, world: int) -> int:
    """Before launching a resumed run on this machine: the committed round, with every rank's file of it present."""
    rnd = committed_round(out, scenario_sha256)
    for r in range(world):
        f = rank_file(out, r, rnd)
        if not f.is_file():
            raise UserError(f"--resume: '{f}' is missing (the checkpoint of rank {r} after committed round {rnd}); "
                            "the checkpoint cannot be resumed: rerun from the start without --resume")
    return rnd


class RankStore(checkpoint.Store):
    """One rank's checkpoint files (see [Note: dist checkpoints]); saves its byte counters too.

    ``before_save`` runs before each save (the worker stops the round's wall clock there, so a
    round's ``wall_s`` does not include writing its checkpoint).
    """

    background = False  # the file must be whole before the commit that follows it

    def __init__(self, out: Path, rank: int, comm: Comm, resume_round: int | None = None,
                 before_save: Callable[[], None] | None = None) -> None:
        super().__init__(Path(out) / FOLDER)
        self.out, self.rank, self.comm, self.resume_round = Path(out), rank, comm, resume_round
        self.before_save = before_save
        self.saved: int | None = None  # the round of the last file written, not yet committed

    def save_path(self, round_index: int) -> Path:
        """This rank's file for ``round_index`` (remembered: :meth:`commit` makes it the one to resume)."""
        if self.before_save is not None:
            self.before_save()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.saved = round_index
        return rank_file(self.out, self.rank, round_index)

    def load_path(self) -> Path:
        """This rank's file of the committed round that the run resumes from."""
        if self.resume_round is None:
            raise UserError("--resume: no committed round was given to this rank; resume with flexpl run --resume")
        return rank_file(self.out, self.rank, self.resume_round)

    def extra(self) -> dict[str, Any]:
        """The bytes this rank measured so far per link (``summary.json``'s ``measured_bytes`` go on from them)."""
        return {"sent": dict(self.comm.sent), "received": dict(self.comm.received)}

    def restored(self, blob: dict[str, Any]) -> None:
        """Take back the measured byte counters of the checkpoint."""
        extra = blob.get("extra") or {}
        self.comm.sent.update({str(k): int(v) for k, v in extra.get("sent", {}).items()})
        self.comm.received.update({str(k): int(v) for k, v in extra.get("received", {}).items()})

    def commit(self, world: int, scenario_sha256: str) -> None:
        """Every rank has written its file of round ``saved``: rank 0 writes the marker, then old files go."""
        import torch

        from flexpl.dist.messages import _point_to_root
        from flexpl.dist.transport import TAG_AUX

        rnd = self.saved
        if rnd is None:
            return
        _point_to_root(self.comm, world, torch.zeros(1))
        if self.rank == 0:
            write_json(self.folder / MARKER, {"round": rnd, "scenario_sha256": scenario_sha256})
            for r in range(1, world):
                self.comm.send(torch.zeros(1), r, tag=TAG_AUX)
        else:
            self.comm.recv((1,), torch.float32, 0, tag=TAG_AUX)
        self.saved = None
        for f in self.folder.glob(f"rank{self.rank}-round*.pt"):  # earlier generations of this rank
            m = _FILE.fullmatch(f.name)
            if m and int(m.group(2)) < rnd:
                f.unlink(missing_ok=True)


def agree_round(comm: Comm, world: int, out: Path, scenario_sha256: str) -> int:
    """Rank 0 reads the committed round (:func:`committed_round`) and sends it to every rank; returns it."""
    import torch

    from flexpl.dist.transport import TAG_AUX

    if comm.rank == 0:
        rnd = committed_round(out, scenario_sha256)
        for r in range(1, world):
            comm.send(torch.tensor([rnd], dtype=torch.int64), r, tag=TAG_AUX)
        return rnd
    return int(comm.recv((1,), torch.int64, 0, tag=TAG_AUX)[0])

