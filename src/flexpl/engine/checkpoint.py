"""Checkpoints: the whole run state after a round, saved atomically, loaded without executing code.

A checkpoint holds the replicas' weights and optimizer state that the next round reads
(see :func:`surviving_state`: a FedAvg client's weights and reset optimizer are overwritten
by the next download before anything reads them, so they are not saved), the aggregators' models,
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

FORMAT = 2  # 2: a replica's "module" or "opt" may be None (not needed to continue; see surviving_state)
READABLE = (1, 2)
FILENAME = "checkpoint.pt"


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
        # a stage on a working model has no client state between rounds (flexpl.engine.fold)
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
        if s in eng.working:  # no client state between rounds (flexpl.engine.fold)
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
    eng.aggregator.load_state_dict(state.get("aggregator", {}))
    eng.anchors = {(int(k.split("/")[0]), int(k.split("/")[1])): sd for k, sd in state.get("anchors", {}).items()}
    eng.stream_ready = {}
    eng.absorb_optimizer_state()


def save(path: Path, *, scenario_sha256: str, round_index: int, rows: list[dict[str, Any]], totals: Totals,
         last_eval: dict[str, float], synced: bool, eng: Engine) -> None:
    """Write the run state after ``round_index`` atomically (temporary file, fsync, rename)."""
    blob = {
        "format": FORMAT, "scenario_sha256": scenario_sha256, "round": round_index, "rows": rows,
        "totals": asdict(totals), "last_eval": last_eval, "synced": synced,
        "engine": engine_state(eng, surviving_state(eng, synced)), "torch_rng": torch.get_rng_state(),
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
    if not isinstance(blob, dict) or blob.get("format") not in READABLE:
        raise UserError(f"--resume: '{path}' is not a FlexPL checkpoint of format {FORMAT}")
    if blob["scenario_sha256"] != scenario_sha256:
        raise UserError(f"--resume: checkpoint '{path}' was written by a different scenario "
                        f"({blob['scenario_sha256'][:12]} vs {scenario_sha256[:12]}); resume with the "
                        "same scenario and --set options, or use another --out")
    return blob


def totals_from(d: dict[str, Any]) -> Totals:
    """Rebuild the cost counters saved in a checkpoint."""
    return Totals(**d)
