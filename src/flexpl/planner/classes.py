"""Learning classes: candidates that train with identical arithmetic and differ only in where it runs.

Two plans are in one class when their :func:`learning_key` is equal. The key is read from the
plan and the training section, never from hosts, links or the cuts that only move work. The
rules, each checked bitwise over two rounds of ``digits-star`` (one executor, ``sequential``;
``tests/unit/planner/test_classes.py``):

1. **Adjacent stages with the same replication and the same sync are one stage.** A cut between
   them only moves blocks from one host to another: SplitFed at any cut equals FL with the same
   FedAvg period (``per_node``/``fedavg`` on both sides); model parallelism at any cut equals
   itself (``single``/``none``), and so does a three-stage plan's middle on one node and tail
   with the trunk they split (``fpl3 cut=1,2 middle@edge`` = ``fpl cut=1 trunk@cloud``, checked
   on a device-edge-cloud chain); a per-device cut equals its parent plan (the front's two pieces
   are both ``per_node``).
2. **A stage with no block is no stage.** ``fpl cut=0`` (an empty front, unsynced) equals
   ``fpl-sync cut=0`` (an empty front, averaged).
3. **Hosts, per-device host overrides and the aggregator's node are not in the key.**

What stays in the key: each remaining stage's blocks, replication and sync (kind, period,
unit, scope), the junction, the schedule, whether data is collected, the groups (where a stage
is per group or averaged per group), and the whole training section the strategy trains with
(optimizer, learning rate, batches, epochs, aggregator). Split learning's relay is *not*
cut-invariant (``sl cut=1`` and ``sl cut=2`` differ: the relayed front and the shared trunk
are different stages), so its cut stays in the key; the same holds for ``fpl`` at different
cuts and for the feature junction.

Bitwise equality holds under one executor. The default ``engine.executor: auto`` trains FedAvg
clients stacked and SplitFed's replicas vmapped, so there FL and SplitFed agree to round-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flexpl.plan.spec import Plan, Stage


def _stage_kind(st: Stage) -> tuple[Any, ...]:
    """What a stage computes apart from its blocks: replication and sync (not host, hosts or aggregator)."""
    s = st.sync
    return (st.replication, s.kind, s.every if s.kind != "none" else None, s.unit if s.kind != "none" else None,
            s.scope if s.kind == "fedavg" else None)


def learning_stages(plan: Plan) -> list[tuple[Any, ...]]:
    """The plan's stages as they learn: empty stages dropped, adjacent alike stages merged.

    Each entry is ``(start, end, replication, sync kind, every, unit, scope)``.
    """
    out: list[list[Any]] = []
    for st in plan.stages:
        if st.end <= st.start:  # rule 2: no block, nothing learns there
            continue
        kind = _stage_kind(st)
        if out and tuple(out[-1][2:]) == kind and out[-1][1] == st.start:  # rule 1: the cut only moves work
            out[-1][1] = st.end
        else:
            out.append([st.start, st.end, *kind])
    return [tuple(x) for x in out]


_NOT_ARITHMETIC = {"eval_every", "checkpoint_every", "eval_test"}  # when to evaluate or save, not how to learn


def learning_key(plan: Plan, training: Any) -> str:
    """A string equal for two plans exactly when the class rules say they train alike (see the module)."""
    stages = learning_stages(plan)
    grouped = any(s[2] == "per_group" or s[6] == "group" for s in stages)
    groups = sorted((k, tuple(v)) for k, v in (plan.groups or {}).items()) if grouped else None
    tr = training.model_dump(mode="json", exclude=_NOT_ARITHMETIC) if hasattr(training, "model_dump") else training
    return repr((stages, plan.junction, plan.schedule, plan.collect_data, groups, tr))


def assign_classes(keys: Sequence[str]) -> tuple[list[str], int]:
    """Class names (``C1``, ``C2``, ... in order of first appearance) for ``keys``; and how many classes."""
    names: dict[str, str] = {}
    out = [names.setdefault(k, f"C{len(names) + 1}") for k in keys]
    return out, len(names)
