"""Checkpoints: the whole run state after a round, saved atomically, loaded without executing code.

A checkpoint holds the replicas' weights and optimizer state that the next round reads
(see :func:`surviving_state`: a FedAvg client's weights and reset optimizer are overwritten
by the next download before anything reads them, so they are not saved), the aggregators' models,
the relay holder, the cost counters and virtual clock, the rows written so far, the
round index, and torch's global RNG state (FlexPL draws its own randomness from
(seed, round, ...) keyed generators, so nothing else is needed to continue bit for bit).
It loads with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.

[Note: background checkpoints] :func:`save` with a :class:`Writer` takes an in-memory
snapshot on the training thread (every tensor cloned, so the next round cannot change it)
and hands it to a background thread that serializes it and writes it atomically
(temporary file, fsync, rename), as torch.distributed.checkpoint's async save does. At most
one write is in flight: the next save waits for the previous one, and a failed write raises
(one line) on the next save or when the run waits for the last one (:meth:`Writer.close`,
before summary.json). A kill during a write leaves the previous checkpoint whole; rounds.csv
may then already hold the row of the round being written, and a resume redoes that round
and rewrites the row (the same numbers: the run is deterministic).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from flexpl.costs.bill import Totals
from flexpl.errors import UserError
from flexpl.io.results import atomic_write
from flexpl.sim.engine import Engine

FORMAT = 2  # 2: a replica's "module" or "opt" may be None (not needed to continue; see surviving_state)
READABLE = (1, 2)
FILENAME = "checkpoint.pt"
DIST_FOLDER = "checkpoint"  # the dist backend's per-rank checkpoints (flexpl.dist.checkpoint)


def surviving_state(eng: Engine, synced: bool) -> list[tuple[bool, bool]]:
    """Per stage: whether its replicas' (weights, optimizer state) are read again after a checkpoint.

    A replica of a stage averaged over all replicas by FedAvg (not per group) gets the
    aggregator's weights at the start of the next round it takes part in, before it trains,
    provided the round just completed ended with a sync (``synced``) and every round does
    (all round-unit FedAvg stages sync every round; with ``every > 1`` a replica that sits
    out the round after a sync trains on its own weights in the round after that). Nothing
    else reads a FedAvg replica's weights (evaluation uses the aggregator's copy). Its
    optimizer state is overwritten too only if ``reset_on_sync``. Everything else (fronts
    without sync, relay stages, group-averaged stages, optimizers not reset, periodic syncs)
    survives and is saved: when in doubt, save.
    """
    stages = eng.plan.stages
    every_round = all(st.sync.every == 1 for st in stages if st.sync.kind == "fedavg" and st.sync.unit == "round")
    out = []
    for s, st in enumerate(stages):
        overwritten = (synced and every_round and st.sync.kind == "fedavg" and st.sync.unit in ("round", "step")
                       and not eng.layout.grouped(s) and eng.layout.aggregators[s] is not None)
        out.append((not overwritten, not (overwritten and eng.opt_cfg.reset_on_sync)))
    return out


def engine_state(eng: Engine, needed: list[tuple[bool, bool]] | None = None) -> dict[str, Any]:
    """Weights and optimizer state of the replicas, and the aggregators' models.

    ``needed`` (from :func:`surviving_state`): per stage, whether replica weights and optimizer
    state are kept; what is not is stored as None. Default: everything.
    """
    needed = needed or [(True, True)] * len(eng.replicas)
    return {
        # a stage on a working model has no client state between rounds (flexpl.sim.exec.fedavg_sum)
        "replicas": [[{"module": r.module.state_dict() if keep_w and s not in eng.working else None,
                       "opt": r.opt.state_dict() if r.opt is not None and keep_o and s not in eng.working else None}
                      for r in reps]
                     for s, (reps, (keep_w, keep_o)) in enumerate(zip(eng.replicas, needed))],
        "global": {str(s): m.state_dict() for s, m in eng.global_.items()},
        "group_global": {f"{s}@{agg}": m.state_dict() for (s, agg), m in eng.group_global.items()},
        "relay_holder": eng.relay_holder,
        # training.aggregator: server state across rounds (FedAdam's moments) and FedProx's anchors
        "aggregator": eng.aggregator.state_dict(),
        "anchors": {f"{s}/{i}": sd for (s, i), sd in eng.anchors.items()},
    }


def load_engine_state(eng: Engine, state: dict[str, Any]) -> None:
    """Restore what :func:`engine_state` saved. Events of earlier rounds are dropped (they are done)."""
    for s, (reps, saved) in enumerate(zip(eng.replicas, state["replicas"])):
        if s in eng.working:  # no client state between rounds (flexpl.sim.exec.fedavg_sum)
            for r in reps:
                r.last_update = None
            continue
        for r, sv in zip(reps, saved):
            if sv["module"] is not None:  # None: overwritten by the next download (surviving_state)
                r.module.load_state_dict(sv["module"])
            if r.opt is not None and sv["opt"] is not None:
                r.opt.load_state_dict(sv["opt"])
            r.last_update = None
    for s, sd in state["global"].items():
        eng.global_[int(s)].load_state_dict(sd)
        eng.global_ev[int(s)] = None
    for key, sd in state.get("group_global", {}).items():  # per-group averages (sync scope "group")
        s, agg = key.split("@", 1)
        eng.group_global[(int(s), agg)].load_state_dict(sd)
        eng.group_ev[(int(s), agg)] = None
    eng.relay_holder = state["relay_holder"]
    dev = eng.device  # (the file is read onto the CPU: a checkpoint taken on a GPU resumes anywhere)
    eng.aggregator.load_state_dict(moved(state.get("aggregator", {}), dev))
    eng.anchors = {(int(k.split("/")[0]), int(k.split("/")[1])): moved(sd, dev)
                   for k, sd in state.get("anchors", {}).items()}
    eng.stream_ready = {}
    eng.absorb_optimizer_state()


def tensors_mapped(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Nested dicts, lists and tuples with ``fn`` applied to their tensors (other leaves are shared: immutable)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: tensors_mapped(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [tensors_mapped(v, fn) for v in obj]
    if isinstance(obj, tuple):
        return tuple(tensors_mapped(v, fn) for v in obj)
    return obj


def moved(obj: Any, device: torch.device) -> Any:
    """Nested dicts, lists and tuples with their tensors on ``device`` (the same tensors where they are)."""
    return tensors_mapped(obj, lambda t: t.to(device))


def snapshot(obj: Any, cpu: bool = False) -> Any:
    """A copy of nested dicts, lists and tuples whose tensors are cloned (other leaves are shared: immutable);
    with ``cpu``, cloned onto the CPU (what another process, which may have no GPU, can load)."""
    return tensors_mapped(obj, (lambda t: t.detach().to("cpu", copy=True)) if cpu else (lambda t: t.detach().clone()))


def write_blob(path: Path, blob: dict[str, Any]) -> None:
    """Serialize ``blob`` and write it to ``path`` atomically (temporary file, fsync, rename)."""
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write(path, buf.getvalue())


class Writer:
    """One background thread writing checkpoints; at most one write in flight (see [Note: background checkpoints]).

    ``write`` does the writing (default :func:`write_blob`; tests pass one that blocks).
    """

    def __init__(self, write: Callable[[Path, dict[str, Any]], None] | None = None) -> None:
        self._write = write or write_blob
        self._thread: threading.Thread | None = None
        self._error: tuple[Path, BaseException] | None = None

    def submit(self, path: Path, blob: dict[str, Any]) -> None:
        """Wait for the previous write (raising its error), then start writing ``blob`` in the background."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(path, blob), name="flexpl-checkpoint", daemon=True)
        _PENDING.add(self)
        self._thread.start()

    def _run(self, path: Path, blob: dict[str, Any]) -> None:
        try:
            self._write(path, blob)
        except BaseException as exc:  # reported on the training thread by wait()
            self._error = (path, exc)

    def wait(self) -> None:
        """Block until the write in flight (if any) is done; raise a one-line UserError if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        _PENDING.discard(self)
        if self._error is not None:
            (path, exc), self._error = self._error, None
            if isinstance(exc, UserError):  # a full disk: atomic_write's line names the file and the space needed
                raise UserError(f"checkpoint: {exc}")
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise UserError(f"checkpoint: writing '{path}' failed ({why}); the previous checkpoint is kept; "
                            "free space or fix the permissions of the output folder and rerun with --resume")

    def close(self, raise_errors: bool = True) -> None:
        """Wait for the last write; ``raise_errors=False`` (already failing) drops its error instead of raising."""
        try:
            self.wait()
        except UserError:
            if raise_errors:
                raise


_PENDING: set[Writer] = set()  # writers with a write in flight (drain() waits for them)


def drain() -> None:
    """Wait for every checkpoint write in flight (the test kill hook calls it: see flexpl.io.injected_faults)."""
    for w in list(_PENDING):
        w.close(raise_errors=False)


class Store:
    """Where a run's checkpoints go: the simulator's one file, ``FOLDER/checkpoint.pt``, overwritten at every save.

    :func:`flexpl.sim.simulator.run` asks it for the file of each save and of a resume, adds
    :meth:`extra` to each saved blob and hands a loaded blob to :meth:`restored`. The
    distributed backend's per-rank store (:class:`flexpl.dist.checkpoint.RankStore`) names a
    file per rank and round, writes in the foreground and keeps the rank's byte counters.
    """

    background = True  # written by a Writer's thread (see [Note: background checkpoints])

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def save_path(self, round_index: int) -> Path:
        """The file the checkpoint of ``round_index`` is written to."""
        return self.folder / FILENAME

    def load_path(self) -> Path:
        """The file a resumed run loads."""
        return self.folder / FILENAME

    def extra(self) -> dict[str, Any]:
        """More state to save beside the run's (numbers, tensors, dicts and lists of them)."""
        return {}

    def restored(self, blob: dict[str, Any]) -> None:
        """Called with the loaded checkpoint before the run continues from it."""


def save(path: Path, *, scenario_sha256: str, round_index: int, rows: list[dict[str, Any]], totals: Totals,
         last_eval: dict[str, float], synced: bool, eng: Engine, writer: Writer | None = None,
         extra: dict[str, Any] | None = None) -> None:
    """Save the run state after ``round_index`` atomically (temporary file, fsync, rename).

    Without ``writer``, the write happens here; with one, a snapshot is taken here and
    written by the writer's background thread (see [Note: background checkpoints]).
    ``extra`` is saved as the blob's ``"extra"`` (see :meth:`Store.extra`).
    """
    blob = {
        "format": FORMAT, "scenario_sha256": scenario_sha256, "round": round_index, "rows": rows,
        "totals": totals_dict(totals), "last_eval": last_eval, "synced": synced,
        "engine": engine_state(eng, surviving_state(eng, synced)), "torch_rng": torch.get_rng_state(),
        "extra": extra or {},
    }
    if writer is None:
        write_blob(path, blob)
    else:  # the totals are a fresh copy already; rows and the last evaluation hold numbers only
        writer.submit(path, {**blob, "rows": [dict(r) for r in rows], "last_eval": dict(last_eval),
                             "engine": snapshot(blob["engine"])})


def load(path: Path, scenario_sha256: str) -> dict[str, Any]:
    """Read a checkpoint safely; refuse a corrupted one or one written by another scenario."""
    if not path.exists():
        if path.name == FILENAME and (path.parent / DIST_FOLDER).is_dir():
            raise UserError(f"--resume: '{path.parent}' holds a checkpoint of the dist backend ({DIST_FOLDER}/), "
                            "not the simulator's; resume it with --backend dist")
        raise UserError(f"--resume: no checkpoint in '{path.parent}' (expected {path.name}); "
                        "start the run without --resume")
    try:
        blob = torch.load(path, weights_only=True, map_location="cpu")  # loaded into modules on their device
    except Exception as exc:  # truncated or foreign files fail in many ways inside torch
        raise UserError(f"--resume: checkpoint '{path}' is corrupted or not a FlexPL checkpoint "
                        f"({type(exc).__name__}); delete it and rerun from the start") from None
    if not isinstance(blob, dict) or blob.get("format") not in READABLE:
        raise UserError(f"--resume: '{path}' is not a FlexPL checkpoint of format {FORMAT}")
    if blob["scenario_sha256"] != scenario_sha256:
        raise UserError(f"--resume: checkpoint '{path}' was written by a different scenario "
                        f"({blob['scenario_sha256'][:12]} vs {scenario_sha256[:12]}); resume with the "
                        "same scenario and --set options, or use another --out")
    return blob


def totals_dict(totals: Totals) -> dict[str, Any]:
    """``dataclasses.asdict(totals)``, faster: its per-node and per-link dicts hold numbers only (1,000 nodes: 2 ms
    instead of 100)."""
    out = {f.name: getattr(totals, f.name) for f in fields(totals)}
    out["node"] = {k: dict(v) for k, v in totals.node.items()}
    out["link"] = {k: dict(v) for k, v in totals.link.items()}
    return out


def totals_from(d: dict[str, Any]) -> Totals:
    """Rebuild the cost counters saved in a checkpoint."""
    return Totals(**d)
