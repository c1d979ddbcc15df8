"""Checkpoints: the whole run state after a round, saved atomically, loaded without executing code.

A checkpoint holds every replica's weights and optimizer state, the aggregators' models,
the relay holder, the cost counters and virtual clock, the rows written so far, the
round index, and torch's global RNG state (FlexPL draws its own randomness from
(seed, round, ...) keyed generators, so nothing else is needed to continue bit for bit).
It loads with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from flexpl.costs.trace import Totals
from flexpl.engine.core import Engine
from flexpl.errors import UserError
from flexpl.results import atomic_write

FORMAT = 1
FILENAME = "checkpoint.pt"


def engine_state(eng: Engine) -> dict[str, Any]:
    """Weights and optimizer state of every replica, and the aggregators' models."""
    return {
        "replicas": [[{"module": r.module.state_dict(),
                       "opt": r.opt.state_dict() if r.opt is not None else None} for r in reps]
                     for reps in eng.replicas],
        "global": {str(s): m.state_dict() for s, m in eng.global_.items()},
        "group_global": {f"{s}@{agg}": m.state_dict() for (s, agg), m in eng.group_global.items()},
        "relay_holder": eng.relay_holder,
    }


def load_engine_state(eng: Engine, state: dict[str, Any]) -> None:
    """Restore what :func:`engine_state` saved. Events of earlier rounds are dropped (they are done)."""
    for reps, saved in zip(eng.replicas, state["replicas"]):
        for r, sv in zip(reps, saved):
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
    eng.stream_ready = {}
    eng.absorb_optimizer_state()


def save(path: Path, *, scenario_sha256: str, round_index: int, rows: list[dict[str, Any]], totals: Totals,
         last_eval: dict[str, float], synced: bool, eng: Engine) -> None:
    """Write the run state after ``round_index`` atomically (temporary file, fsync, rename)."""
    blob = {
        "format": FORMAT, "scenario_sha256": scenario_sha256, "round": round_index, "rows": rows,
        "totals": asdict(totals), "last_eval": last_eval, "synced": synced,
        "engine": engine_state(eng), "torch_rng": torch.get_rng_state(),
    }
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write(path, buf.getvalue())


def load(path: Path, scenario_sha256: str) -> dict[str, Any]:
    """Read a checkpoint safely; refuse a corrupted one or one written by another scenario."""
    if not path.exists():
        raise UserError(f"--resume: no checkpoint in '{path.parent}' (expected {path.name}); "
                        "start the run without --resume")
    try:
        blob = torch.load(path, weights_only=True)
    except Exception as exc:  # truncated or foreign files fail in many ways inside torch
        raise UserError(f"--resume: checkpoint '{path}' is corrupted or not a FlexPL checkpoint "
                        f"({type(exc).__name__}); delete it and rerun from the start") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"--resume: '{path}' is not a FlexPL checkpoint of format {FORMAT}")
    if blob["scenario_sha256"] != scenario_sha256:
        raise UserError(f"--resume: checkpoint '{path}' was written by a different scenario "
                        f"({blob['scenario_sha256'][:12]} vs {scenario_sha256[:12]}); resume with the "
                        "same scenario and --set options, or use another --out")
    return blob


def totals_from(d: dict[str, Any]) -> Totals:
    """Rebuild the cost counters saved in a checkpoint."""
    return Totals(**d)
