"""A round as data: the program of operations one round of a plan runs, built in one place.

The simulator (``engine.simulator``: tensors through the ``Engine``), the distributed
backend (the same round loop on every rank) and the planner (``planner.walk.ShapeWalk``:
shapes alone) all run a round by building its program here and walking it with
:func:`walk`; only the runner differs. So the schedule kinds (lockstep, sequential,
round-robin) and the sync rules (which stages are downloaded, averaged after a step,
relayed, uploaded) live in this module only, and a change to how a plan executes
changes the prediction by construction.

A program is a sequence of blocks, each a :class:`Repeat` of operations:

- :class:`Collect` (centralized plans, round 1): every data node ships its data to ``dst``;
- :class:`Download` the averaged weights of a FedAvg stage to the replicas serving ``names``;
- :class:`Relay` the relay stages' weights to ``node`` (sequential schedule);
- :class:`Step` one training step of ``((node, batch index), ...)``, in batch order;
- :class:`StepSync`: step-level FedAvg of a stage over the step's nodes (upload, then download);
- :class:`Upload` a FedAvg stage's replicas serving ``names`` and average them.

``Repeat(n, ops)`` runs ``ops`` ``n`` times; in copy ``i`` every batch index of a
``Step`` is ``i`` further on. The builder makes a run of steps with the same nodes and
batch sizes one ``Repeat`` (this is what the planner's compressed trace counts instead of
re-detecting it; see [Note: compressed rounds] in ``flexpl/planner/__init__.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from flexpl.plan.spec import Plan


@dataclass(frozen=True)
class Collect:
    """Every data node sends its raw samples, then its labels, to ``dst``."""

    dst: str


@dataclass(frozen=True)
class Download:
    """The aggregator's copy of stage ``stage`` to the replicas serving ``names``."""

    stage: int
    names: tuple[str, ...]


@dataclass(frozen=True)
class Relay:
    """Hand every relay stage's weights from their holder to ``node``."""

    node: str


@dataclass(frozen=True)
class Step:
    """One training step: ``batch = ((node, batch index), ...)`` (index shifted by the copy in a Repeat)."""

    batch: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class StepSync:
    """Step-level FedAvg of stage ``stage`` among the replicas serving ``names``: upload, average, download."""

    stage: int
    names: tuple[str, ...]


@dataclass(frozen=True)
class Upload:
    """Stage ``stage`` from the replicas serving ``names`` to its aggregator(s), then the average."""

    stage: int
    names: tuple[str, ...]


Op = Collect | Download | Relay | Step | StepSync | Upload


@dataclass(frozen=True)
class Repeat:
    """``ops`` run ``n`` times; copy ``i`` takes every step's batch ``i`` further on."""

    n: int
    ops: tuple[Op, ...]


@dataclass(frozen=True)
class Program:
    """One round: ``start`` (collect, downloads), ``steps`` (relays and training steps), ``end`` (uploads)."""

    start: tuple[Repeat, ...]
    steps: tuple[Repeat, ...]
    end: tuple[Repeat, ...]

    @property
    def blocks(self) -> tuple[Repeat, ...]:
        """Every block, in order."""
        return self.start + self.steps + self.end


class Runner(Protocol):
    """What runs the operations: the engine on tensors, or the planner's walk on shapes."""

    def collect(self, dst: str) -> None: ...
    def download(self, stage: int, names: Sequence[str]) -> None: ...
    def relay(self, node: str) -> None: ...
    def step(self, batch: tuple[tuple[str, int], ...]) -> None: ...
    def step_sync(self, stage: int, names: Sequence[str]) -> None: ...
    def upload(self, stage: int, names: Sequence[str]) -> None: ...


# ---------------------------------------------------------------------------------- sync rules


def round_fedavg(plan: Plan) -> list[int]:
    """Stages averaged by FedAvg at the end of a round (downloaded at the start of the next)."""
    return [s for s, x in enumerate(plan.stages) if x.sync.kind == "fedavg" and x.sync.unit == "round"]


def step_fedavg(plan: Plan) -> list[int]:
    """Stages averaged by FedAvg every ``sync.every`` joint steps."""
    return [s for s, x in enumerate(plan.stages) if x.sync.kind == "fedavg" and x.sync.unit == "step"]


def uploads_after(plan: Plan, rnd: int, rounds: int) -> bool:
    """Whether round ``rnd`` of ``rounds`` ends with the round-level FedAvg (every ``every`` rounds, and the last)."""
    return rnd % max([plan.stages[s].sync.every for s in round_fedavg(plan)] or [1]) == 0 or rnd == rounds


def relays(plan: Plan) -> bool:
    """Whether the round hands relay stages from node to node (sequential schedule with a relay stage)."""
    return plan.schedule == "sequential" and any(st.sync.kind == "relay" for st in plan.stages)


def relay_holder_after(plan: Plan, selected: Sequence[str]) -> str | None:
    """Who holds the relay stages after a round with ``selected`` (the last node of a sequential round)."""
    return selected[-1] if plan.schedule == "sequential" else None


# ---------------------------------------------------------------------------------- the builder


def start_blocks(plan: Plan, selected: Sequence[str], download: bool, collect_to: str | None = None
                 ) -> tuple[Repeat, ...]:
    """Collect (``collect_to``: where), then one block downloading every FedAvg stage, if ``download``."""
    out = []
    if collect_to is not None:
        out.append(Repeat(1, (Collect(collect_to),)))
    stages = round_fedavg(plan) + step_fedavg(plan)
    if download and stages:
        names = tuple(selected)
        out.append(Repeat(1, tuple(Download(s, names) for s in stages)))
    return tuple(out)


def end_blocks(plan: Plan, selected: Sequence[str], upload: bool) -> tuple[Repeat, ...]:
    """One block uploading every round-level FedAvg stage, if ``upload``."""
    stages = round_fedavg(plan)
    if not (upload and stages):
        return ()
    names = tuple(selected)
    return (Repeat(1, tuple(Upload(s, names) for s in stages)),)


def step_blocks(plan: Plan, selected: Sequence[str], sizes: dict[str, list[int]], node_major: bool = False,
                step_syncs: Sequence[tuple[int, int]] | None = None) -> tuple[Repeat, ...]:
    """The round's relays and training steps in the schedule's order; runs of equal steps as one Repeat.

    lockstep: every node's t-th batch in joint step t (node by node with ``node_major``: see
    [Note: node-major order] in ``sim/simulator.py``); sequential: node after node, each
    all its batches, after the relay to it; round_robin: one batch per step, nodes taking
    turns. ``sizes``: each node's batch sizes. ``step_syncs``: (stage, every) of step-level
    FedAvg (default: the plan's), due after every ``every`` joint steps.
    """
    if step_syncs is None:
        step_syncs = [(s, plan.stages[s].sync.every) for s in step_fedavg(plan)]
    selected = list(selected)
    if not step_syncs:
        return _step_runs(plan.schedule, selected, sizes, node_major)
    return _steps_synced(plan.schedule, selected, sizes, list(step_syncs), node_major)


def round_program(plan: Plan, selected: Sequence[str], sizes: dict[str, list[int]], download: bool, upload: bool,
                  collect_to: str | None = None, node_major: bool = False) -> Program:
    """The whole round: :func:`start_blocks`, :func:`step_blocks`, :func:`end_blocks`."""
    return Program(start_blocks(plan, selected, download, collect_to),
                   step_blocks(plan, selected, sizes, node_major), end_blocks(plan, selected, upload))


def _merge(out: list[Repeat], count: int, ops: tuple[Op, ...], key: tuple, keys: list[tuple]) -> None:
    """Append ``count`` copies of ``ops``, or lengthen the last block if it holds the same steps (``key``)."""
    if out and keys[-1] == key and len(out[-1].ops) and isinstance(out[-1].ops[0], Step):
        out[-1] = Repeat(out[-1].n + count, out[-1].ops)
    else:
        out.append(Repeat(count, ops))
        keys.append(key)


def _step_runs(schedule: str, selected: list[str], sizes: dict[str, list[int]],
               node_major: bool) -> tuple[Repeat, ...]:
    """:func:`step_blocks` without step-level syncs, from where batch sizes change (not step by step)."""
    out: list[Repeat] = []
    keys: list[tuple] = []
    if schedule == "sequential" or (schedule == "lockstep" and node_major):
        for n in selected:
            if schedule == "sequential":
                out.append(Repeat(1, (Relay(n),)))
                keys.append(("relay", n))
            t = 0
            for b, same in groupby(sizes[n]):
                k = len(list(same))
                _merge(out, k, (Step(((n, t),)),), (((n, b),),), keys)
                t += k
        return tuple(out)
    # lockstep or round_robin: step (turn) t holds every node with more than t batches
    cuts = {0}
    for n in selected:
        t = 0
        for _, same in groupby(sizes[n]):
            t += len(list(same))
            cuts.add(t)
    bounds = sorted(cuts)
    for a, b in zip(bounds, bounds[1:]):
        batch = tuple((n, a) for n in selected if a < len(sizes[n]))
        key = tuple((n, sizes[n][a]) for n, _ in batch)
        ops = tuple(Step((x,)) for x in batch) if schedule == "round_robin" else (Step(batch),)
        _merge(out, b - a, ops, key, keys)
    return tuple(out)


def _steps_synced(schedule: str, selected: list[str], sizes: dict[str, list[int]],
                  syncs: list[tuple[int, int]], node_major: bool) -> tuple[Repeat, ...]:
    """:func:`step_blocks` with step-level syncs: block by block (a joint step or a turn), equal neighbours merged."""
    joint = 0

    def one(batch: tuple[tuple[str, int], ...], key: list) -> tuple[Op, ...]:
        nonlocal joint
        joint += 1
        names = tuple(n for n, _ in batch)
        due = tuple(joint % k == 0 for _, k in syncs)
        key.append((tuple((n, sizes[n][t]) for n, t in batch), due))
        return (Step(batch), *(StepSync(s, names) for (s, _), d in zip(syncs, due) if d))

    out: list[Repeat] = []
    keys: list[tuple] = []

    def add(ops: tuple[Op, ...], key: list) -> None:
        _merge(out, 1, ops, tuple(key), keys)

    if schedule == "sequential" or (schedule == "lockstep" and node_major):
        for n in selected:
            if schedule == "sequential":
                out.append(Repeat(1, (Relay(n),)))
                keys.append(("relay", n))
            for t in range(len(sizes[n])):
                key: list = []
                add(one(((n, t),), key), key)
    elif schedule == "round_robin":
        cursor = dict.fromkeys(selected, 0)
        while any(cursor[n] < len(sizes[n]) for n in selected):
            key, turn = [], []
            for n in selected:
                if cursor[n] < len(sizes[n]):
                    turn.extend(one(((n, cursor[n]),), key))
                    cursor[n] += 1
            add(tuple(turn), key)
    else:
        for t in range(max(len(b) for b in sizes.values())):
            key = []
            add(one(tuple((n, t) for n in selected if t < len(sizes[n])), key), key)
    return tuple(out)


# ---------------------------------------------------------------------------------- the walker


def walk(blocks: Sequence[Repeat], runner: Runner, repeat: Callable[[int, Callable[[int], None]], None] | None = None
         ) -> None:
    """Run ``blocks`` on ``runner``, in order. ``repeat(n, body)`` runs a block's ``n`` copies
    (``body(i)``: copy ``i``); by default one after the other (the planner's walk records a
    few and counts the rest)."""
    for blk in blocks:
        ops = blk.ops
        if repeat is None:
            for i in range(blk.n):
                run_ops(ops, runner, i)
        else:
            repeat(blk.n, lambda i, ops=ops: run_ops(ops, runner, i))


def run_ops(ops: Sequence[Op], runner: Runner, shift: int = 0) -> None:
    """Run one copy of a block's operations (copy ``shift``: batch indices ``shift`` further on)."""
    for op in ops:
        if isinstance(op, Step):
            runner.step(op.batch if not shift else tuple((n, t + shift) for n, t in op.batch))
        elif isinstance(op, StepSync):
            runner.step_sync(op.stage, op.names)
        elif isinstance(op, Download):
            runner.download(op.stage, op.names)
        elif isinstance(op, Upload):
            runner.upload(op.stage, op.names)
        elif isinstance(op, Relay):
            runner.relay(op.node)
        elif isinstance(op, Collect):
            runner.collect(op.dst)
        else:  # pragma: no cover - a new op kind must be taught to the walker
            raise TypeError(f"unknown round operation {op!r}")
