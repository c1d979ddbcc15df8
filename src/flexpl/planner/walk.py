"""The shape walk: one round of a plan recorded action by action from shapes alone."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from flexpl.costs.trace import Compressed, Recorder
from flexpl.models.aggregate import fedavg_flops
from flexpl.plan.program import end_blocks, start_blocks, step_blocks, walk
from flexpl.plan.step import StepRecord
from flexpl.plan.step import train_step as walk_step

prod = math.prod

if TYPE_CHECKING:
    from flexpl.planner.placement import PlanContext


@dataclass
class ShapeReplica:
    """A replica as the walk sees it: where it lives and the event after which its weights are current."""

    host: str
    last_update: int | None = None


class ShapeWalk:
    """Records, from shapes alone, the actions the engine records for one round of a plan.

    The shape runner of a round's program (``flexpl.plan.program``): mirrors ``Engine.train_step``,
    ``download``, ``upload``, ``relay`` and ``collect``, walked in the program's order as the
    simulator walks it (without failures): the same
    ``Recorder`` calls with the same FLOPs, bytes, dependencies and labels, so the trace
    is the simulator's (tests compare them action by action). Only the tensors are gone.
    """

    def __init__(self, ctx: PlanContext) -> None:
        self.ctx = ctx
        self.rec: Recorder = Recorder(ctx.topo)
        self.reps = [[ShapeReplica(r.host) for r in reps] for reps in ctx.layout.replicas]
        # what the step walker (flexpl.plan.step) reads
        self.layout, self.replicas, self.recorder = ctx.layout, self.reps, self.rec
        self.opt_flops, self.features, self.junction_stage = ctx.opt_flops, ctx.features, ctx.junction_stage
        self._sizes: dict[str, int] = {}
        self._out_grad, self._input_grad = ctx.out_grad, ctx.input_grad
        self._probe, self._x_bytes = ctx.probe, math.prod(ctx.in_shape) * ctx.x_esize
        self.global_ev: dict[Any, int | None] = {}
        for s in ctx.fed_round + ctx.fed_step:  # per stage, or per (stage, group head) for sync scope "group"
            if ctx.layout.grouped(s):
                self.global_ev.update({(s, a): None for a in ctx.layout.agg_of[s].values()})
            else:
                self.global_ev[s] = None
        self.stream_ready: dict[str, int | None] = {}
        self.relay_holder: str | None = None
        self.blocks: list[list[int]] = []
        self.activations: dict[tuple[int, int], int] = {}
        self.sizes: dict[str, list[int]] = {}  # the round's batch sizes per node

    # -------------------------------------------------------------- engine operations

    def step(self, batch: Sequence[tuple[str, int]]) -> None:
        """The program's ``Step``: ``batch`` = [(node, batch index)] (see :meth:`train_step`)."""
        sizes = self.sizes
        self._sizes = {n: sizes[n][t] for n, t in batch}
        walk_step(self, self._sizes)

    def step_sync(self, s: int, names: Sequence[str]) -> None:
        """The program's ``StepSync``: step-level FedAvg, as the simulator's runner does it."""
        self.upload(s, names)
        self.download(s, names)

    def train_step(self, batch: Sequence[tuple[str, int]]) -> None:
        """``Engine.train_step`` for ``batch`` = [(node, batch size)], in batch order (``flexpl.plan.step``)."""
        self._sizes = dict(batch)
        walk_step(self, self._sizes)

    # -------------------------------------------------------------- the step runner (flexpl.plan.step): shapes

    # values are (shape, bytes): moving one records its bytes (the walker does it: step_move is None)
    step_move = None
    step_nbytes = itemgetter(1)

    def step_streams(self, nodes: Sequence[str]) -> list[tuple[tuple[int, ...], int]]:
        """Each node's input batch: (shape, bytes)."""
        sizes, shape, per = self._sizes, self.ctx.in_shape, self._x_bytes
        return [((sizes[n], *shape), sizes[n] * per) for n in nodes]

    def step_labels(self, nodes: Sequence[str]) -> list[tuple[tuple[int, ...], int]]:
        """Each node's labels: (shape, bytes)."""
        sizes, per = self._sizes, self.ctx.y_esize
        return [((sizes[n],), sizes[n] * per) for n in nodes]

    step_pre = None  # nothing runs ahead

    def step_forward(self, s: int, ridx: int, rep: ShapeReplica, parts: list[tuple[tuple[int, ...], int]], dim: int,
                     pre: Any) -> tuple[tuple[int, ...], tuple[tuple[int, ...], int], int, int]:
        """Stage ``s``'s probe on the joined input shape; keeps the largest saved activations per replica."""
        inp = parts[0][0] if len(parts) == 1 else _cat([p[0] for p in parts], dim)
        pr = self._probe(s, inp)
        key = (s, ridx)
        if pr.saved_bytes > self.activations.get(key, -1):
            self.activations[key] = pr.saved_bytes
        return inp, (pr.out_shape, prod(pr.out_shape) * pr.out_esize), pr.fwd, pr.bwd

    def step_sizes(self, parts: list[tuple[tuple[int, ...], int]], dim: int) -> list[int]:
        """Each part's extent along ``dim``."""
        return [p[0][dim] for p in parts]

    def step_split(self, out: tuple[tuple[int, ...], int], sizes: list[int]) -> list[tuple[tuple[int, ...], int]]:
        """``out`` split on dimension 0."""
        shape, nbytes = out
        per = nbytes // shape[0]  # bytes per sample
        return [((n, *shape[1:]), n * per) for n in sizes]

    def step_backprop(self, s: int, recs: list[StepRecord]) -> list[bool]:
        """Whether stage ``s``'s output takes a gradient (the same for all its replicas)."""
        return [self._out_grad[s]] * len(recs)

    step_arithmetic = False  # no loss, no backward pass: the walker skips step_backward

    def step_backward(self, s: int, rec: StepRecord, grads: Any, pending: dict) -> tuple[float, int]:
        """No arithmetic, no loss counted (not called: ``step_arithmetic`` is False)."""
        return 0.0, 0

    def step_input_grads(self, s: int, recs: list[StepRecord]) -> list[list[tuple[tuple[int, ...], int]]] | None:
        """The input's gradient (shape, bytes) per member of each of ``recs``, if stage ``s`` sends one back."""
        if not self._input_grad[s]:
            return None
        esize = self.ctx.act_esize
        out = []
        for rec in recs:
            inp = rec.inp
            if len(rec.members) == 1:
                out.append([(inp, prod(inp) * esize)])
                continue
            pieces = []
            for n in rec.sizes:
                piece = _with(inp, rec.dim, n)
                pieces.append((piece, prod(piece) * esize))
            out.append(pieces)
        return out

    def download(self, s: int, names: Sequence[str]) -> None:
        """``Engine.download`` of stage ``s`` to the replicas serving ``names``."""
        layout = self.ctx.layout
        if layout.grouped(s):  # Engine._download_group: by group head, in order of first appearance
            ridxs = self._participants(s, names)
            for a in dict.fromkeys(layout.agg_of[s][r] for r in ridxs):
                for ridx in (r for r in ridxs if layout.agg_of[s][r] == a):
                    rep = self.reps[s][ridx]
                    rep.last_update = self.rec.transfer(a, rep.host, self.ctx.state_bytes[s],
                                                        [self.global_ev[(s, a)], rep.last_update], "weights", f"s{s}")
            return
        agg = self.ctx.layout.aggregators[s]
        for ridx in self._participants(s, names):
            rep = self.reps[s][ridx]
            rep.last_update = self.rec.transfer(agg, rep.host, self.ctx.state_bytes[s],
                                                [self.global_ev[s], rep.last_update], "weights", f"s{s}")

    def upload(self, s: int, names: Sequence[str]) -> None:
        """``Engine.upload`` of stage ``s`` from the replicas serving ``names``, then the average."""
        agg_flops = self.ctx.agg_flops or fedavg_flops  # training.aggregator's count (FedAvg by default)
        layout = self.ctx.layout
        if layout.grouped(s):  # Engine._upload_group: each to its group head, then one average per head
            ridxs = self._participants(s, names)
            evs = {r: self.rec.transfer(self.reps[s][r].host, layout.agg_of[s][r], self.ctx.state_bytes[s],
                                        [self.reps[s][r].last_update], "weights", f"s{s}") for r in ridxs}
            for a in dict.fromkeys(layout.agg_of[s][r] for r in ridxs):
                mine = [evs[r] for r in ridxs if layout.agg_of[s][r] == a]
                self.global_ev[(s, a)] = self.rec.compute(a, agg_flops(len(mine), self.ctx.float_elements[s]),
                                                          mine, "aggregate", f"s{s}")
            return
        agg = self.ctx.layout.aggregators[s]
        evs = [self.rec.transfer(self.reps[s][ridx].host, agg, self.ctx.state_bytes[s],
                                 [self.reps[s][ridx].last_update], "weights", f"s{s}")
               for ridx in self._participants(s, names)]
        if evs:
            self.global_ev[s] = self.rec.compute(agg, agg_flops(len(evs), self.ctx.float_elements[s]), evs,
                                                 "aggregate", f"s{s}")

    def relay(self, to_node: str) -> None:
        """``Engine.relay``: hand every relay stage's weights from the holder to ``to_node``."""
        holder, self.relay_holder = self.relay_holder, to_node
        if holder is None or holder == to_node:
            return
        serves = self.ctx.layout.serves
        for s, st in enumerate(self.ctx.stages):
            if st.sync.kind != "relay":
                continue
            src, dst = self.reps[s][serves[s][holder]], self.reps[s][serves[s][to_node]]
            dst.last_update = self.rec.transfer(src.host, dst.host, self.ctx.state_bytes[s],
                                                [src.last_update, dst.last_update], "weights", f"s{s}")

    def collect(self, dst: str) -> None:
        """``Engine.collect``: every data node ships its raw samples, then its labels, to ``dst``."""
        c = self.ctx
        for n in c.data_nodes:
            self.rec.transfer(n, dst, c.samples[n] * math.prod(c.in_shape) * c.x_esize, [], "data", "data")
            self.rec.transfer(n, dst, c.samples[n] * c.y_esize, [], "data", "data")

    def _participants(self, s: int, names: Sequence[str]) -> list[int]:
        serves = self.ctx.layout.serves[s]
        return sorted({serves[n] for n in names})

    # -------------------------------------------------------------- one round, compressed

    def _pattern(self) -> tuple[bool, ...]:
        """Which engine events are unset: with the same blocks to walk, the same pattern means the same program."""
        return (tuple(r.last_update is None for reps in self.reps for r in reps)
                + tuple(v is None for v in self.global_ev.values())
                + tuple(self.stream_ready.get(n) is None for n in self.ctx.train_nodes))

    def _block(self, fn: Callable[[], None]) -> None:
        lo = len(self.rec.trace)
        fn()
        if len(self.rec.trace) > lo:
            self.blocks.append([lo, len(self.rec.trace), 0])

    def _repeat(self, count: int, fn: Callable[[int], None]) -> None:
        """A program's ``Repeat`` block: one block, or :meth:`_run` for a run of copies."""
        if count == 1:
            self._block(lambda: fn(0))
        else:
            self._run(count, fn)

    def _run(self, count: int, fn: Callable[[int], None]) -> None:
        """Walk ``count`` identical blocks (``fn(i)``: copy ``i``); once one repeats the block before it,
        count the rest as copies."""
        prev: tuple[int, int, tuple] | None = None
        for i in range(count):
            pattern = self._pattern()
            lo = len(self.rec.trace)
            fn(i)
            hi = len(self.rec.trace)
            if prev is not None and prev[2] == pattern and self._same(prev[0], lo, hi):
                self.blocks.append([lo, hi, count - 1 - i])
                return
            self.blocks.append([lo, hi, 0])
            prev = (lo, hi, pattern)

    def _same(self, a: int, b: int, hi: int) -> bool:
        """Blocks ``a..b-1`` and ``b..hi-1`` hold the same actions, and the second depends only on
        itself, on the first, or on the same earlier events as the first."""
        n = hi - b
        if b - a != n:
            return False
        t = self.rec.trace
        for col in (t.kind, t.resource, t.duration, t.amount, t.what, t.label, t.src, t.dst):
            if col[a:b] != col[b:hi]:
                return False
        for j in range(n):
            da, db = t.deps[a + j], t.deps[b + j]
            if len(da) != len(db):
                return False
            inner_a = {d - a for d in da if d >= a}
            inner_b = {d - b for d in db if d >= b}
            if inner_a != inner_b or any(d < a and d not in da for d in db):
                return False
        return True

    def walk(self, selected: Sequence[str], download: bool, collect: bool) -> Compressed:
        """Record one round: the round's program (``flexpl.plan.program``: collect in round 1 of a
        centralized plan, download, the steps, the upload), its Repeat blocks compressed."""
        c = self.ctx
        plan = c.plan
        self.sizes = {n: c.batches[n] for n in selected}
        node_major = c.independent_paths and not c.fed_step
        walk(start_blocks(plan, selected, download, c.topo.server if collect else None)
             + step_blocks(plan, selected, self.sizes, node_major), self, self._repeat)
        split = len(self.rec.trace)
        walk(end_blocks(plan, selected, True), self, self._repeat)
        return Compressed(self.rec.trace, self.blocks, split, dict(self.activations))


def _cat(shapes: list[tuple[int, ...]], dim: int) -> tuple[int, ...]:
    first = shapes[0]
    return (*first[:dim], sum(s[dim] for s in shapes), *first[dim + 1:])


def _with(shape: tuple[int, ...], dim: int, n: int) -> tuple[int, ...]:
    return (*shape[:dim], n, *shape[dim + 1:])
