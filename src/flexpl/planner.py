"""``flexpl plan``: predict what many plans cost without training them, and recommend one.

    flexpl plan edge-fmnist --objective energy --constraint "sim_time_s_per_round<=120"

1. **Candidates.** Every preset, every cut point (pairs of cuts for three-stage plans:
   per-device front, middle on the edge heads, tail on the server), the groupings the
   topology suggests, FedAvg every 1, 2 or 5 rounds. Each candidate is a scenario variant
   (``strategy`` + ``plan``) that ``flexpl run`` executes as is.
2. **Prediction without training.** A shape walk records, action by action, the trace the
   engine records for a round (the same ``Recorder``, FLOP counter, byte sizes and clock),
   from shapes alone. Runs of identical steps are recorded twice and then counted, and the
   clock jumps over them once they repeat; see [Note: compressed rounds]. FLOPs and bytes
   equal what a simulated run counts, time and energy agree to rounding (the tests check).
3. **Memory per node.** Parameters, gradients, optimizer state of every replica a node
   hosts (plus the aggregator's averaged copy), and the activations autograd saves for one
   batch, against the node's ``memory_bytes``.
4. **Choice.** Constraints (``COLUMN<=VALUE``), the Pareto front of the objective against
   bytes and time, ``plans.csv``, ``pareto.png`` and ``best.yaml``. ``--validate K`` trains
   the K best feasible plans for a few rounds and adds their accuracy.

This is the planner the background asks for (RightTrain, Malandrino & Chiasserini,
arXiv 2202.11349: choose data/model parallelism and layer placement jointly under energy,
time and memory constraints), restricted to costs: accuracy comes only from ``--validate``.

[Note: compressed rounds] A round repeats itself. In lockstep, every joint step with the
same nodes and batch sizes records the same actions; only their event ids move on. The
walk records a step, and when the next identical step records the same actions from the
same state (the same engine events unset), every later identical step is a copy of it
whose dependencies on the step before are shifted by one step's length. The walk keeps
that copy once with a repeat count, which is exact for FLOPs, bytes and energy. The clock
then unrolls the copies one at a time through the simulator's own scheduler
(``schedule_range``) until every independent part of the step (actions linked by
dependencies or a shared node/link) advances by the same time from one copy to the next.
From then on it does so exactly, because the clock rules are invariant under a time
shift, so the clock jumps over the remaining copies. Scheduling block by block equals
scheduling the whole round only while no action overtakes an earlier block's action on
the same resource: the clock checks this, merges the blocks when it happens, and where
it cannot (SplitFed devices lapping each other at a shared server, raw inputs streaming
ahead of the model), or once it has unrolled an eighth of the round without settling, it
schedules the whole round with the simulator's own loop (``costs.trace.sweep``, which
``schedule`` runs), straight from the compressed form: the copies of a block share one
list of successors, as offsets (``_FlatRound``). The round without its upload runs the
same until the first upload action is taken; it goes on from there (``_FlatRound.resume``).
Makespans are clocked only for the rounds a plan has (``WalkedRound.clock``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import heapq
import math
import operator
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexpl.errors import UserError

if TYPE_CHECKING:  # heavy imports stay out of ``flexpl --help``
    from flexpl.config import Scenario
    from flexpl.costs.trace import Recorder, Totals, Trace
    from flexpl.data import Dataset
    from flexpl.models import BlockModel
    from flexpl.plan import Layout, Plan
    from flexpl.topology import Topology

SYNC_EVERY = (1, 2, 5)
OBJECTIVES = {"energy": "energy_j_per_round", "time": "sim_time_s_per_round", "bytes": "bytes_per_round",
              "device_energy": "device_energy_j_per_round"}
# predicted columns a --constraint may name (booleans accept a bare name or ==true/false)
NUMERIC_COLUMNS = (
    "flops_per_round", "bytes_per_round", "sim_time_s_per_round", "energy_j_per_round",
    "device_energy_j_per_round", "energy_j_compute_per_round", "energy_j_comm_per_round",
    "max_device_bytes_per_round", "peak_memory_bytes_max", "peak_memory_device_max", "params_total",
    "max_params_total", "flops_total", "bytes_total", "sim_time_s", "energy_j_total", "device_energy_j_total",
    "raw_bytes_per_round", "stages", "sync_every")
BOOL_COLUMNS = ("device_memory_fits", "raw_data_moved")
ID_COLUMNS = ("plan", "strategy", "family", "cut", "grouping", "sync_every", "stages")
CSV_COLUMNS = (*ID_COLUMNS, "flops_per_round", "bytes_per_round", "sim_time_s_per_round", "energy_j_per_round",
               "device_energy_j_per_round", "energy_j_compute_per_round", "energy_j_comm_per_round",
               "max_device_bytes_per_round", "raw_bytes_per_round", "raw_data_moved", "peak_memory_bytes_max",
               "peak_memory_device_max", "device_memory_fits", "params_total", "max_params_total", "rounds",
               "flops_total", "bytes_total", "sim_time_s", "energy_j_total", "device_energy_j_total", "feasible", "pareto", "recommended",
               "accuracy", "validated_rounds", "predict_ms")


# ---------------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    """One plan to cost: a ``strategy`` and a ``plan:`` mapping, i.e. a complete scenario variant."""

    label: str
    strategy: str
    plan: dict[str, Any] | None
    family: str
    cut: str = ""
    grouping: str = ""
    sync_every: int | None = None


def _stage(replication: str, host: str = "own", every: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"replication": replication, "host": host}
    if every is not None:
        out["sync"] = {"kind": "fedavg", "every": every}
    return out


def enumerate_candidates(topo: Topology, n_blocks: int) -> list[Candidate]:
    """Every preset at every cut, the topology's groupings, and FedAvg every 1/2/5 rounds.

    A cut ``c`` keeps blocks ``[0, c)`` on the devices (``c = 0``: they send raw data); the
    last stage always keeps at least one block. Presets stay presets where they can (so
    ``best.yaml`` reads ``strategy: fpl`` + ``plan: {cut: 2}``); variants a preset cannot
    express (another sync period, another grouping, three stages) are explicit ``plan.stages``.
    """
    from flexpl.plan import default_chain

    server = topo.server
    groups = topo.default_groups()
    heads = sorted(groups)
    edges = heads != [server]  # some data nodes reach the server through an intermediate node
    cuts = range(0, n_blocks)
    out = [Candidate("centralized", "centralized", None, "centralized")]
    for k in SYNC_EVERY:
        plan = None if k == 1 else {"name": "fl", "stages": [_stage("per_node", every=k)]}
        out.append(Candidate(f"fl every={k}", "fl", plan, "fl", sync_every=k))
    for c in cuts:
        out.append(Candidate(f"sl cut={c}", "sl", {"cut": c}, "sl", str(c)))
    for c in cuts:
        for k in SYNC_EVERY:
            plan = {"cut": c} if k == 1 else {"name": "sfl", "cut": c, "stages": [
                _stage("per_node", every=k), _stage("per_node", server, every=k)]}
            out.append(Candidate(f"sfl cut={c} every={k}", "sfl", plan, "sfl", str(c), sync_every=k))
    for c in cuts:
        out.append(Candidate(f"mp cut={c}", "mp", {"cut": c}, "mp", str(c), "->".join(default_chain(topo))))
    for c in cuts:
        if len(groups) == 1:
            out.append(Candidate(f"fpl cut={c} trunk@{heads[0]}", "fpl", {"cut": c}, "fpl", str(c), heads[0]))
        else:
            for k in SYNC_EVERY:
                plan = {"cut": c} if k == 1 else {"name": "fpl", "cut": c, "stages": [
                    _stage("per_node"), _stage("per_group", every=k)]}
                out.append(Candidate(f"fpl cut={c} trunk@edges every={k}", "fpl", plan, "fpl", str(c), "edges",
                                     sync_every=k))
        if edges:  # one trunk for everybody, on the server
            out.append(Candidate(f"fpl cut={c} trunk@{server}", "fpl", {"name": "fpl", "cut": c, "stages": [
                _stage("per_node"), _stage("single", server)]}, "fpl", str(c), server))
    for c in cuts:  # fronts averaged at the server every round (the fpl-sync preset)
        where = heads[0] if len(groups) == 1 else "edges"
        out.append(Candidate(f"fpl-sync cut={c} trunk@{where}", "fpl-sync", {"cut": c}, "fpl-sync", str(c), where))
        if edges:  # fronts averaged at their edge (the fpl-group preset); with no edges it is fpl-sync
            out.append(Candidate(f"fpl-group cut={c} trunk@{where}", "fpl-group", {"cut": c}, "fpl-group", str(c),
                                 where))
    for c in cuts:
        out.append(Candidate(f"fpl-features cut={c}", "fpl-features", {"cut": c}, "fpl-features", str(c), server))
    if edges:  # three stages: device front, middle on the edge heads, tail on the server
        busiest = default_chain(topo)[0]
        for c1 in cuts:
            for c2 in range(c1 + 1, n_blocks):
                tail = _stage("single", server)
                cut = f"{c1},{c2}"
                if len(groups) > 1:
                    for k in SYNC_EVERY:
                        out.append(Candidate(f"fpl3 cut={cut} middle@edges every={k}", "fpl", {
                            "name": "fpl3", "cut": [c1, c2],
                            "stages": [_stage("per_node"), _stage("per_group", every=k), tail]},
                            "fpl3", cut, "edges", sync_every=k))
                out.append(Candidate(f"fpl3 cut={cut} middle@{busiest}", "fpl", {
                    "name": "fpl3", "cut": [c1, c2],
                    "stages": [_stage("per_node"), _stage("single", busiest), tail]}, "fpl3", cut, busiest))
    return out


def candidate_data(scn: Scenario, cand: Candidate) -> dict[str, Any]:
    """The candidate as a complete scenario mapping (the base scenario with its strategy and plan)."""
    data = scn.resolved()
    data["strategy"] = cand.strategy
    data["plan"] = copy.deepcopy(cand.plan)
    return data


# ---------------------------------------------------------------------------------- stage costs


def saved_activation_bytes(module: BlockModel, shape: tuple[int, ...], input_grad: bool
                           ) -> tuple[tuple[int, ...], int, int]:
    """Output shape, output element size, and bytes autograd saves for backward on an input of ``shape``.

    Runs ``module`` (a meta copy is made if needed) under ``saved_tensors_hooks`` and sums
    each distinct saved storage once; parameters (saved by Linear/Conv) are excluded because
    they are counted as parameters. The input counts when a layer saves it.
    """
    import torch

    meta = module if next(iter(module.parameters()), torch.empty(0, device="meta")).is_meta \
        else copy.deepcopy(module).to("meta")
    # untyped_storage()._cdata identifies a storage, also on the meta device (data_ptr is 0 there)
    params = {p.untyped_storage()._cdata for p in meta.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st._cdata not in params:
            saved[st._cdata] = st.nbytes()
        return t

    x = torch.empty(shape, dtype=torch.float32, device="meta", requires_grad=input_grad)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = meta(x)
    return tuple(int(d) for d in out.shape), out.element_size(), sum(saved.values())


@dataclass(frozen=True)
class StageProbe:
    """What one stage costs on one input shape: FLOPs, output, activations saved for backward."""

    fwd: int
    bwd: int
    out_shape: tuple[int, ...]
    out_esize: int
    saved_bytes: int


class StageCosts:
    """FLOPs (the engine's counter), shapes, saved activations and weights of model stages, cached.

    One instance serves every candidate of a scenario: a stage is keyed by the model
    variant (input shape, feature-junction block and branches) and its block range.
    """

    def __init__(self, spec: Any, num_classes: int, seed: int) -> None:
        self.spec, self.num_classes, self.seed = spec, num_classes, seed
        self._models: dict[tuple, BlockModel] = {}
        self._stages: dict[tuple, BlockModel] = {}
        self._probes: dict[tuple, StageProbe] = {}
        self._per_sample: dict[tuple, tuple | None] = {}
        self._weights: dict[tuple, tuple[int, int, int]] = {}

    def model(self, variant: tuple) -> BlockModel:
        """The full model of ``variant`` = (input shape, junction block or None, branches), on meta."""
        hit = self._models.get(variant)
        if hit is None:
            import torch

            from flexpl.models import build_model

            shape, junction, branches = variant
            with torch.random.fork_rng(devices=[]):  # build_model seeds the global RNG; leave it as it was
                hit = build_model(self.spec, shape, self.num_classes, seed=self.seed, junction_block=junction,
                                  branches=branches).to("meta")
            self._models[variant] = hit
        return hit

    def stage(self, variant: tuple, start: int, end: int) -> BlockModel:
        """Blocks ``[start, end)`` of the variant's model (meta), as ``plan.py`` cuts them."""
        key = (variant, start, end)
        hit = self._stages.get(key)
        if hit is None:
            from flexpl.engine.core import stage_module

            hit = self._stages[key] = stage_module(self.model(variant), start, end)
        return hit

    def probe(self, variant: tuple, start: int, end: int, shape: tuple[int, ...], input_grad: bool,
              loss: bool = False) -> StageProbe:
        """FLOPs (``count_fwd_bwd``, as the engine's FlopCache; with the loss when ``loss``), output
        and saved bytes; cached.

        A round meets many batch sizes (last batches, joined batches), so a stage is counted
        at batch sizes 1, 2 and 3: where FLOPs and saved bytes are affine in the batch (true
        of every layer in the zoo; the mean loss adds one division per batch), other sizes
        are read off the line through those counts exactly; otherwise the shape is counted directly.
        """
        key = (variant, start, end, shape, input_grad, loss)
        hit = self._probes.get(key)
        if hit is None:
            per = (variant, start, end, shape[1:], input_grad, loss)
            if per not in self._per_sample:
                ones = [self._count(variant, start, end, (b, *shape[1:]), input_grad, loss) for b in (1, 2, 3)]
                d = [ones[1].fwd - ones[0].fwd, ones[1].bwd - ones[0].bwd]
                linear = all(p.fwd == ones[0].fwd + (b - 1) * d[0] and p.bwd == ones[0].bwd + (b - 1) * d[1]
                             and p.out_shape[0] == b and p.out_shape[1:] == ones[0].out_shape[1:]
                             for b, p in zip((1, 2, 3), ones))
                affine = ones[2].saved_bytes - ones[1].saved_bytes == ones[1].saved_bytes - ones[0].saved_bytes
                self._per_sample[per] = (ones[0], ones[1].saved_bytes - ones[0].saved_bytes, d) \
                    if linear and affine else None
            lin = self._per_sample[per]
            b = shape[0]
            if lin is None or not shape:
                hit = self._count(variant, start, end, shape, input_grad, loss)
            else:
                one, saved_per, d = lin
                hit = StageProbe(one.fwd + (b - 1) * d[0], one.bwd + (b - 1) * d[1], (b, *one.out_shape[1:]),
                                 one.out_esize, one.saved_bytes + (b - 1) * saved_per)
            self._probes[key] = hit
        return hit

    def _count(self, variant: tuple, start: int, end: int, shape: tuple[int, ...], input_grad: bool,
               loss: bool = False) -> StageProbe:
        from flexpl.costs.flops import count_fwd_bwd

        mod = self.stage(variant, start, end)
        fwd, bwd = count_fwd_bwd(mod, shape, input_grad, loss=loss)
        out_shape, esize, saved = saved_activation_bytes(mod, shape, input_grad)
        return StageProbe(fwd, bwd, out_shape, esize, saved)

    def float_elements(self, variant: tuple, start: int, end: int) -> int:
        """Floating-point elements of a stage's state dict (what FedAvg averages)."""
        return sum(t.numel() for t in self.stage(variant, start, end).state_dict().values() if t.is_floating_point())

    def weights(self, variant: tuple, start: int, end: int, trainable_count: bool = False) -> tuple[int, int, int]:
        """(parameter count, trainable parameter bytes, state-dict bytes) of a stage."""
        key = (variant, start, end)
        hit = self._weights.get(key)
        if hit is None:
            mod = self.stage(variant, start, end)
            params = sum(p.numel() for p in mod.parameters())
            trainable = sum(p.numel() * p.element_size() for p in mod.parameters() if p.requires_grad)
            state = sum(t.numel() * t.element_size() for t in mod.state_dict().values())
            hit = self._weights[key] = (params, trainable, state)
        if trainable_count:  # trainable parameters, as the optimizer sees them
            mod = self.stage(variant, start, end)
            return sum(p.numel() for p in mod.parameters() if p.requires_grad), hit[1], hit[2]
        return hit


# ---------------------------------------------------------------------------------- the shape walk


def batch_sizes(n: int, epochs: int, batch_size: int, max_steps: int | None) -> list[int]:
    """Sizes of a node's batches in one round, as ``engine.core.batches`` splits its shuffles."""
    one = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    out = one * epochs
    return out[:max_steps] if max_steps else out


@dataclass
class _Rep:
    """A replica as the walk sees it: where it lives and the event after which its weights are current."""

    host: str
    last_update: int | None = None


@dataclass
class Compressed:
    """A round's trace with runs of identical blocks kept once (see [Note: compressed rounds]).

    ``blocks[b] = [lo, hi, extra]``: actions ``lo..hi-1`` form one block, followed by
    ``extra`` copies of it; a copy depends on the copy before it where the block depends on
    the block before it (``lo - (hi - lo) .. lo - 1``), and later actions see the last copy.
    ``split`` is where the end-of-round upload starts (``len(trace)`` without one).
    """

    trace: Trace
    blocks: list[list[int]]
    split: int
    activations: dict[tuple[int, int], int] = field(default_factory=dict)  # (stage, replica) -> max saved bytes

    def repeat(self) -> list[int]:
        """How many times each recorded action happens in the round."""
        rep = [1] * len(self.trace)
        for lo, hi, extra in self.blocks:
            if extra:
                rep[lo:hi] = [1 + extra] * (hi - lo)
        return rep


class ShapeWalk:
    """Records, from shapes alone, the actions the engine records for one round of a plan.

    Mirrors ``Engine.train_step``, ``download``, ``upload``, ``relay`` and ``collect`` and the
    order of ``simulator.train_round``/``_play_round`` (without failures): the same
    ``Recorder`` calls with the same FLOPs, bytes, dependencies and labels, so the trace
    is the simulator's (tests compare them action by action). Only the tensors are gone.
    """

    def __init__(self, ctx: PlanContext) -> None:
        from flexpl.costs.trace import Recorder

        self.ctx = ctx
        self.rec: Recorder = Recorder(ctx.topo)
        self.reps = [[_Rep(r.host) for r in reps] for reps in ctx.layout.replicas]
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

    # -------------------------------------------------------------- engine operations

    def step(self, batch: Sequence[tuple[str, int]]) -> None:
        """``Engine.train_step`` for ``batch`` = [(node, batch size)], in batch order."""
        c, rec = self.ctx, self.rec
        serves = c.layout.serves
        last = len(c.stages) - 1
        sizes_of = dict(batch)
        carry = {n: ((b, *c.in_shape), c.x_esize, n, self.stream_ready.get(n)) for n, b in batch}
        saved: list[list[tuple]] = [[] for _ in c.stages]
        for s in range(len(c.stages)):
            groups: dict[int, list[str]] = {}
            for m in carry:
                groups.setdefault(serves[s][m], []).append(m)
            dim = 1 if (c.features and s == c.junction_stage) else 0
            new_carry = {}
            for ridx, members in groups.items():
                rep = self.reps[s][ridx]
                label = f"s{s}r{ridx}"
                evs = [rep.last_update]
                parts = []
                for m in members:
                    shape, esize, loc, ev = carry[m]
                    evs.append(rec.transfer(loc, rep.host, math.prod(shape) * esize, [ev],
                                            "input" if s == 0 else "activation", label))
                    parts.append(shape)
                inp = parts[0] if len(parts) == 1 else _cat(parts, dim)
                pr = c.probe(s, inp)
                fwd_ev = rec.compute(rep.host, pr.fwd, evs, "fwd", label)
                key = (s, ridx)
                if pr.saved_bytes > self.activations.get(key, -1):
                    self.activations[key] = pr.saved_bytes
                out_keys = members[:1] if dim == 1 else members
                sizes = [p[dim] for p in parts]
                labels = []
                if s == last:  # labels travel from their owner to the loss
                    for m in out_keys:
                        labels.append(rec.transfer(m, rep.host, sizes_of[m] * c.y_esize,
                                                   [self.stream_ready.get(m)], "labels", label))
                saved[s].append((rep, ridx, inp, members, out_keys, sizes, dim, fwd_ev, pr.bwd, labels))
                if len(out_keys) == 1:
                    new_carry[out_keys[0]] = (pr.out_shape, pr.out_esize, rep.host, fwd_ev)
                else:
                    for m, n in zip(out_keys, sizes):
                        new_carry[m] = ((n, *pr.out_shape[1:]), pr.out_esize, rep.host, fwd_ev)
            carry = new_carry

        pending: dict[str, tuple] = {}
        for s in range(last, -1, -1):
            next_pending = {}
            for rep, ridx, inp, members, out_keys, sizes, dim, fwd_ev, f_bwd, labels in saved[s]:
                label = f"s{s}r{ridx}"
                if s == last:
                    evs = [fwd_ev, *labels]
                elif c.out_grad[s]:
                    evs = [fwd_ev]
                    for m in out_keys:
                        g_shape, g_esize, loc, gev = pending[m]
                        evs.append(rec.transfer(loc, rep.host, math.prod(g_shape) * g_esize, [gev], "gradient",
                                                label))
                else:  # a stage with no parameters fed by raw data: nothing flows back
                    for m in members:
                        self.stream_ready[m] = fwd_ev
                    continue
                bwd_ev = rec.compute(rep.host, f_bwd + c.opt_flops[s], evs, "bwd", label)
                rep.last_update = bwd_ev
                if c.input_grad[s]:
                    for m, n in zip(members, sizes):
                        piece = inp if len(members) == 1 else _with(inp, dim, n)
                        next_pending[m] = (piece, c.act_esize, rep.host, bwd_ev)
                else:
                    for m in members:
                        self.stream_ready[m] = bwd_ev
            pending = next_pending

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
        from flexpl.costs.flops import fedavg_flops

        layout = self.ctx.layout
        if layout.grouped(s):  # Engine._upload_group: each to its group head, then one average per head
            ridxs = self._participants(s, names)
            evs = {r: self.rec.transfer(self.reps[s][r].host, layout.agg_of[s][r], self.ctx.state_bytes[s],
                                        [self.reps[s][r].last_update], "weights", f"s{s}") for r in ridxs}
            for a in dict.fromkeys(layout.agg_of[s][r] for r in ridxs):
                mine = [evs[r] for r in ridxs if layout.agg_of[s][r] == a]
                self.global_ev[(s, a)] = self.rec.compute(a, fedavg_flops(len(mine), self.ctx.float_elements[s]),
                                                          mine, "aggregate", f"s{s}")
            return
        agg = self.ctx.layout.aggregators[s]
        evs = [self.rec.transfer(self.reps[s][ridx].host, agg, self.ctx.state_bytes[s],
                                 [self.reps[s][ridx].last_update], "weights", f"s{s}")
               for ridx in self._participants(s, names)]
        if evs:
            self.global_ev[s] = self.rec.compute(agg, fedavg_flops(len(evs), self.ctx.float_elements[s]), evs,
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

    def _run(self, count: int, fn: Callable[[], None]) -> None:
        """Walk ``count`` identical blocks; once one repeats the block before it, count the rest as copies."""
        prev: tuple[int, int, tuple] | None = None
        for i in range(count):
            pattern = self._pattern()
            lo = len(self.rec.trace)
            fn()
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
        """Record one round: collect (centralized, round 1), download, the steps, the upload."""
        c = self.ctx
        if collect:
            self._block(lambda: self.collect(c.topo.server))
        if download:
            self._block(lambda: self._sync("download", c.fed_round + c.fed_step, selected))
        sizes = {n: c.batches[n] for n in selected}
        node_major = c.independent_paths and not c.fed_step
        for kind, count, payload in _step_blocks(c.plan.schedule, list(selected), sizes, c.fed_step_every,
                                                 node_major):
            if kind == "relay":
                self._block(lambda n=payload: self.relay(n))
            else:
                self._run(count, lambda steps=payload: self._steps(steps))
        split = len(self.rec.trace)
        self._block(lambda: self._sync("upload", c.fed_round, selected))
        return Compressed(self.rec.trace, self.blocks, split, dict(self.activations))

    def _sync(self, what: str, stages: list[int], names: Sequence[str]) -> None:
        for s in stages:
            getattr(self, what)(s, names)

    def _steps(self, steps: tuple) -> None:
        c = self.ctx
        for batch, syncs in steps:
            self.step(batch)
            names = [n for n, _ in batch]
            for s, due in zip(c.fed_step, syncs):
                if due:  # step-level FedAvg, as train_round does it
                    self.upload(s, names)
                    self.download(s, names)


def _cat(shapes: list[tuple[int, ...]], dim: int) -> tuple[int, ...]:
    first = shapes[0]
    return (*first[:dim], sum(s[dim] for s in shapes), *first[dim + 1:])


def _with(shape: tuple[int, ...], dim: int, n: int) -> tuple[int, ...]:
    return (*shape[:dim], n, *shape[dim + 1:])


def _step_blocks(schedule: str, selected: list[str], sizes: dict[str, list[int]],
                 sync_every: list[int], node_major: bool = False) -> list[tuple[str, int, Any]]:
    """The round's blocks in program order, runs of equal ones merged: (``"steps"``, count, steps) or (``"relay"``, 1, node).

    A block is one joint step (lockstep), one node's step (sequential, or lockstep in
    ``train_round``'s node-major order when no replica is shared) or one turn of every node
    still training (round_robin); a step is ((node, batch size), ...) plus which step-level
    syncs fall due after it.
    """
    if not sync_every:
        return _step_runs(schedule, selected, sizes, node_major)
    joint = 0

    def due() -> tuple[bool, ...]:
        nonlocal joint
        joint += 1
        return tuple(joint % k == 0 for k in sync_every)

    def one(batch: tuple[tuple[str, int], ...]) -> tuple:
        return batch, due()

    blocks: list[tuple[str, Any]] = []
    if schedule == "sequential":
        for n in selected:
            blocks.append(("relay", n))
            for b in sizes[n]:
                blocks.append(("steps", (one(((n, b),)),)))
    elif schedule == "lockstep" and node_major:  # [Note: node-major order] in engine/simulator.py
        for n in selected:
            for b in sizes[n]:
                blocks.append(("steps", (one(((n, b),)),)))
    elif schedule == "round_robin":
        cursor = dict.fromkeys(selected, 0)
        while any(cursor[n] < len(sizes[n]) for n in selected):
            turn = []
            for n in selected:
                if cursor[n] < len(sizes[n]):
                    turn.append(one(((n, sizes[n][cursor[n]]),)))
                    cursor[n] += 1
            blocks.append(("steps", tuple(turn)))
    else:
        for t in range(max(len(b) for b in sizes.values())):
            blocks.append(("steps", (one(tuple((n, sizes[n][t]) for n in selected if t < len(sizes[n]))),)))
    out: list[tuple[str, int, Any]] = []
    for kind, payload in blocks:
        if kind == "steps" and out and out[-1][0] == "steps" and out[-1][2] == payload:
            out[-1] = ("steps", out[-1][1] + 1, payload)
        else:
            out.append((kind, 1, payload))
    return out


def _step_runs(schedule: str, selected: list[str], sizes: dict[str, list[int]],
               node_major: bool) -> list[tuple[str, int, Any]]:
    """:func:`_step_blocks` without step-level syncs, from where batch sizes change instead of step by step."""
    from itertools import groupby

    out: list[tuple[str, int, Any]] = []

    def add(count: int, payload: tuple) -> None:
        if out and out[-1][0] == "steps" and out[-1][2] == payload:
            out[-1] = ("steps", out[-1][1] + count, payload)
        else:
            out.append(("steps", count, payload))

    if schedule == "sequential" or (schedule == "lockstep" and node_major):
        for n in selected:
            if schedule == "sequential":
                out.append(("relay", 1, n))
            for b, same in groupby(sizes[n]):
                add(len(list(same)), ((((n, b),), ()),))
        return out
    # lockstep or round_robin: step (turn) t holds every node with more than t batches
    cuts = {0}
    for n in selected:
        t = 0
        for _, same in groupby(sizes[n]):
            t += len(list(same))
            cuts.add(t)
    bounds = sorted(cuts)
    for a, b in zip(bounds, bounds[1:]):
        batch = tuple((n, sizes[n][a]) for n in selected if a < len(sizes[n]))
        if schedule == "round_robin":
            add(b - a, tuple(((x,), ()) for x in batch))
        else:
            add(b - a, ((batch, ()),))
    return out


# ---------------------------------------------------------------------------------- the clock


def _components(t: Trace, lo: int, hi: int) -> list[tuple[list[int], set[str]]]:
    """Independent parts of block ``lo..hi-1`` across its copies: actions joined by a dependency
    (inside the block or on the block before) or by a shared node/link; with their resources."""
    n = hi - lo
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    last_on: dict[str, int] = {}
    for j in range(n):
        for d in t.deps[lo + j]:
            if d >= lo - n:
                parent[find(j)] = find(d - lo if d >= lo else d - lo + n)
        r = t.resource[lo + j]
        if r in last_on:
            parent[find(j)] = find(last_on[r])
        last_on[r] = j
    comps: dict[int, list[int]] = {}
    for j in range(n):
        comps.setdefault(find(j), []).append(j)
    return [(js, {t.resource[lo + j] for j in js}) for js in comps.values()]


class _Clock:
    """Unrolls a compressed round onto the virtual clock, block by block, jumping over periodic copies."""

    # Two copies are "the same up to a shift" when every time differs by the shift to within
    # this relative tolerance: ~50x the rounding of a sum of a few dozen durations, far
    # below any real difference between two durations.
    TOL = 1e-13
    MAX_MERGE = 4  # blocks a late block may be merged back into before giving up on block-by-block

    ALL_COLUMNS = ("kind", "resource", "duration", "what", "amount", "src", "dst", "label", "wasted")
    CLOCK_COLUMNS = ("kind", "resource", "duration")  # what the clock reads (besides deps)

    def __init__(self, ct: Compressed, max_unrolled: int | None = None, columns: tuple[str, ...] = CLOCK_COLUMNS
                 ) -> None:
        from flexpl.costs.trace import Trace

        self.ct = ct
        self.columns = columns  # the unrolled trace's columns that are filled in (expand() wants all)
        # give up once this many actions are unrolled: the whole-round clock (_FlatRound) is
        # then cheaper than jumping, which unrolls a round that never settles almost in full
        self.max_unrolled = max_unrolled
        self.w = Trace()  # the unrolled trace (copies stamped as needed)
        self.start: list[float] = []
        self.end: list[float] = []
        self.ready: list[float] = []
        self.free: dict[str, float] = {}
        self.maxr: dict[str, float] = {}  # resource -> latest ready time of an action on it so far
        # units: (first action, free and maxr before it, how many blocks were merged into it)
        self.units: list[tuple[int, dict[str, float], dict[str, float], int]] = []
        self.barrier = 0  # units before this index cannot be rescheduled (time jumped after them)
        self.id_map = [0] * len(ct.trace)
        # resource -> (latest ready of a hoisted transfer on it, its place in the round's program)
        self.hoist_last: dict[str, tuple[float, int]] = {}
        self.src_of: list[int] = []  # unrolled action -> recorded action it copies

    def stamp(self, lo: int, hi: int, k: int, prev: int) -> int:
        """Append copy ``k`` of block ``lo..hi-1`` (``prev``: where copy ``k-1`` starts); returns its start."""
        src, w, n = self.ct.trace, self.w, hi - lo
        base = len(w.kind)
        id_map = self.id_map
        for i in range(lo, hi):
            ds = []
            for d in src.deps[i]:
                if d >= lo:
                    ds.append(base + d - lo)
                elif k and d >= lo - n:
                    ds.append(prev + d - lo + n)
                else:
                    ds.append(id_map[d])
            w.deps.append(tuple(ds))
        for name in self.columns:
            getattr(w, name).extend(getattr(src, name)[lo:hi])
        self.src_of.extend(range(lo, hi))
        pad = [0.0] * n
        self.start.extend(pad)
        self.end.extend(pad)
        self.ready.extend(pad)
        return base

    def stamp_list(self, idx: list[int]) -> int:
        """Append the actions ``idx`` of non-repeated blocks (their dependencies already stamped)."""
        src, w, id_map = self.ct.trace, self.w, self.id_map
        base = len(w.kind)
        for j, i in enumerate(idx):
            w.deps.append(tuple(id_map[d] for d in src.deps[i]))
            id_map[i] = base + j
        pick = operator.itemgetter(*idx)
        for name in self.columns:
            got = pick(getattr(src, name))
            getattr(w, name).extend(got if len(idx) > 1 else (got,))
        self.src_of.extend(idx)
        pad = [0.0] * len(idx)
        self.start.extend(pad)
        self.end.extend(pad)
        self.ready.extend(pad)
        return base

    def _hoistable(self) -> list[int]:
        """Transfers behind a run that depend on nothing but such transfers (e.g. a node's first labels).

        In sequential and round-robin schedules a node's first step is recorded after other
        nodes' runs of steps, but its labels can leave at time zero; scheduled first, they no
        longer look as if they overtook every block in between.
        """
        from flexpl.costs.trace import COMPUTE

        t, out = self.ct.trace, set()
        behind_a_run = False  # before the first run, blocks are scheduled as they come anyway
        for lo, hi, extra in self.ct.blocks:
            behind_a_run = behind_a_run or extra > 0
            if extra or lo >= self.ct.split or not behind_a_run:
                continue
            for i in range(lo, hi):
                if t.kind[i] != COMPUTE and all(d in out for d in t.deps[i]):
                    out.add(i)
        return sorted(out)

    def schedule_unit(self, lo: int, hi: int) -> int | None:
        """Schedule actions ``lo..hi-1`` after the earlier ones; merge with earlier blocks an action
        overtakes. Returns the index of the unit they ended up in, or None when that would mean
        rescheduling a jumped block or more than ``MAX_MERGE`` blocks together."""
        from flexpl.costs.trace import schedule_range

        if self.max_unrolled is not None and hi > self.max_unrolled:
            return None
        self.units.append((lo, dict(self.free), dict(self.maxr), 1))
        first = len(self.units) - 1
        merged = 1
        res, ready = self.w.resource, self.ready
        while True:
            ulo, free0, maxr0, _ = self.units[first]
            free = dict(free0)
            schedule_range(self.w, ulo, hi, 0.0, self.start, self.end, ready, free)
            # the block-by-block clock equals the whole-round clock while every resource
            # still serves actions in the order they became ready
            hoisted, src_of = self.hoist_last, self.src_of
            if all(ready[i] >= maxr0.get(res[i], -math.inf) for i in range(ulo, hi)) and (
                    not hoisted or all((ready[i], src_of[i]) > hoisted.get(res[i], (-math.inf, 0))
                                       for i in range(ulo, hi))):
                break
            first -= 1
            # merging far back means the blocks interleave for good (devices lapping each
            # other at a shared node): one clock over the whole round is then cheaper
            if first < self.barrier:
                return None
            merged += self.units[first][3]
            if merged > self.MAX_MERGE:
                return None
        self.units[first] = (ulo, free0, maxr0, merged)
        del self.units[first + 1:]
        maxr = dict(maxr0)
        for i in range(ulo, hi):
            if ready[i] > maxr.get(res[i], -math.inf):
                maxr[res[i]] = ready[i]
        self.free, self.maxr = free, maxr
        return first

    def _shifts(self, comps: list[tuple[list[int], set[str]]], a: int, b: int) -> list[float] | None:
        """Per component, the time copy ``b`` is ahead of copy ``a``, if all its times move by it."""
        out = []
        tol = self.TOL
        for js, _ in comps:
            j0 = js[0]
            d = self.end[b + j0] - self.end[a + j0]
            for arr in (self.ready, self.start, self.end):
                for j in js:
                    if abs(arr[b + j] - arr[a + j] - d) > tol * abs(arr[b + j]):
                        return None
            out.append(d)
        return out

    def _jump(self, comps: list[tuple[list[int], set[str]]], shifts: list[float], b: int, m: int) -> None:
        """Move copy ``b`` (and what its resources carry on) ``m`` copies ahead."""
        for (js, resources), d in zip(comps, shifts):
            dt = m * d
            for arr in (self.ready, self.start, self.end):
                for j in js:
                    arr[b + j] += dt
            for r in resources:
                self.free[r] += dt
                self.maxr[r] += dt
        self.barrier = len(self.units)

    def run(self) -> tuple[float, float] | None:
        """Makespan of the round without and with its end-of-round upload; None if not exact this way."""
        ct = self.ct
        t_prefix = None
        hoist = self._hoistable()
        hoisted = set(hoist)
        for lo, hi, extra in ct.blocks:
            if lo >= ct.split and t_prefix is None:
                t_prefix = max(self.end, default=0.0)
            if extra and hoist:
                # Hoisted transfers go where the first run starts, in program order: they may
                # merge with the blocks before (which precede them in the program too), but
                # later actions on their nodes and links must become ready after them (at the
                # same time only if later in the program), so the order is the simulator's.
                base = self.stamp_list(hoist)
                if self.schedule_unit(base, len(self.w.kind)) is None:
                    return None
                for i in range(base, len(self.w.kind)):
                    r = self.w.resource[i]
                    last = self.hoist_last.get(r, (-math.inf, 0))
                    self.hoist_last[r] = max(last, (self.ready[i], self.src_of[i]))
                self.barrier = len(self.units)
                hoist = []
            if not extra:
                idx = [i for i in range(lo, hi) if i not in hoisted]
                if idx and self.schedule_unit(self.stamp_list(idx), len(self.w.kind)) is None:
                    return None
                continue
            comps = _components(ct.trace, lo, hi) if extra > 1 else []
            prev = base = -1
            k = 0
            while k <= extra:
                base = self.stamp(lo, hi, k, prev)
                n_units = len(self.units)
                unit = self.schedule_unit(base, base + hi - lo)
                if unit is None:
                    return None
                if 1 <= k < extra and unit == n_units:  # not merged: may be periodic already
                    shifts = self._shifts(comps, prev, base)
                    if shifts is not None:
                        self._jump(comps, shifts, base, extra - k)
                        break
                prev = base
                k += 1
            for i in range(lo, hi):  # later actions see the last copy
                self.id_map[i] = base + i - lo
        full = max(self.end, default=0.0)
        return (full if t_prefix is None else t_prefix), full


def expand(ct: Compressed) -> tuple[Trace, int]:
    """The round's full trace (every copy stamped), and where its upload starts in it."""
    clk = _Clock(ct, columns=_Clock.ALL_COLUMNS)
    split = None
    for lo, hi, extra in ct.blocks:
        if lo >= ct.split and split is None:
            split = len(clk.w)
        prev = base = -1
        for k in range(extra + 1):
            base = clk.stamp(lo, hi, k, prev)
            prev = base
        for i in range(lo, hi):
            clk.id_map[i] = base + i - lo
    return clk.w, (len(clk.w) if split is None else split)


def _slice(t: Trace, lo: int, hi: int) -> Trace:
    from flexpl.costs.trace import Trace

    return Trace(**{name: getattr(t, name)[lo:hi] for name in Trace.__dataclass_fields__})


class _FlatRound:
    """A compressed round unrolled into int-coded arrays, in :func:`expand`'s order, for the whole-round clock.

    The simulator's clock (``schedule`` from time 0): the same loop, ``costs.trace.sweep``,
    takes actions in order of (ready time, place in the round), each resource first come
    first served, so the times are the simulator's to the last bit (a test checks). Only
    the representation differs: resources are numbered, and a copy of a repeated block
    lists its successors as the block's offsets from the copy's start (``base[i] + o`` for
    ``o`` in ``succ[i]``), so unrolling a copy allocates nothing per action. Actions of the
    last copy and of blocks that do not repeat list theirs in full (``base[i] = 0``),
    including those in later blocks.
    """

    def __init__(self, ct: Compressed) -> None:
        t = ct.trace
        codes: dict[str, int] = {}
        rcode = [codes.setdefault(r, len(codes)) for r in t.resource]
        self.n_res = len(codes)
        res: list[int] = []
        dur: list[float] = []
        succ: list[list[int]] = []
        bases: list[int] = []
        indeg: list[int] = []
        roots: list[int] = []
        id_map = [0] * len(t)
        split = None
        deps = t.deps
        for lo, hi, extra in ct.blocks:
            if lo >= ct.split and split is None:
                split = len(res)
            n = hi - lo
            rs, ds = rcode[lo:hi], t.duration[lo:hi]
            # successors inside a copy, and in the next copy too (a dependency on the block
            # before is one on the copy before), as offsets from the copy's start
            inner: list[list[int]] = [[] for _ in range(n)]
            both: list[list[int]] = [[] for _ in range(n)]
            deg = [len(deps[i]) for i in range(lo, hi)]
            free = [j for j in range(n) if not deg[j]]
            ext0: list[tuple[int, int]] = []  # (offset, earlier action) the first copy depends on
            extk: list[tuple[int, int]] = []  # the same for later copies: before the copy before
            for j in range(n):
                for d in deps[lo + j]:
                    if d >= lo:
                        inner[d - lo].append(j)
                        both[d - lo].append(j)
                    else:
                        ext0.append((j, id_map[d]))
                        if d >= lo - n:
                            both[d - lo + n].append(n + j)
                        else:
                            extk.append((j, id_map[d]))
            for k in range(extra + 1):
                base = len(res)
                res.extend(rs)
                dur.extend(ds)
                indeg.extend(deg)
                roots.extend([base + j for j in free])
                if k < extra:
                    succ.extend(both)
                    bases.extend([base] * n)
                else:  # the last copy: absolute ids, so that later blocks can add theirs
                    succ.extend([[base + o for o in tpl] for tpl in inner])
                    bases.extend([0] * n)
                for j, g in (extk if k else ext0):
                    succ[g].append(base + j)  # g is in a last copy or a block that does not repeat
            last = len(res) - n
            for i in range(lo, hi):
                id_map[i] = last + i - lo
        self.res, self.dur, self.succ, self.base, self.indeg = res, dur, succ, bases, indeg
        self.split = len(res) if split is None else split
        self.fork: tuple | None = None  # see run()
        self.roots = roots  # actions that depend on nothing, in order

    def run(self, n: int, fork: int | None = None) -> tuple[list[float], list[float]]:
        """End and ready times of the first ``n`` actions scheduled on their own (``n`` = all or the split).

        With ``fork``, the state just before the first action at or after ``fork`` is taken
        is kept in ``self.fork``: up to there, the round without its upload runs the same
        (see :meth:`resume`).
        """
        indeg = self.indeg[:n]
        ready = [0.0] * n
        end = [0.0] * n
        heap = [(0.0, i) for i in self.roots if i < n]  # in order: already a heap
        self._sweep(heap, ready, end, [0.0] * self.n_res, indeg, self._successors(n), n if fork is None else fork)
        return end, ready

    def resume(self) -> list[float]:
        """End times of the actions before the split, scheduled without the upload, from ``self.fork``."""
        assert self.fork is not None
        heap, ready, end, free, indeg = self.fork
        self.fork = None  # the sweep below uses it up
        split = self.split
        heap = [x for x in heap if x[1] < split]
        heapq.heapify(heap)
        self._sweep(heap, ready, end, free, indeg, self._successors(split), len(self.res))
        return end[:split]

    def _successors(self, n: int) -> list[list[int]]:
        if n == len(self.res):
            return self.succ
        return [s if not s or b or s[-1] < n else [j for j in s if j < n] for s, b in zip(self.succ[:n], self.base)]

    def _sweep(self, heap: list[tuple[float, int]], ready: list[float], end: list[float], free: list[float],
               indeg: list[int], succ: list[list[int]], fork: int) -> None:
        from flexpl.costs.trace import sweep

        kept = sweep(heap, self.res, self.dur, succ, self.base, indeg, ready, None, end, free, fork)
        if kept is not None:  # the first upload action: keep the state for resume()
            self.fork = kept


def makespans(ct: Compressed) -> tuple[float, float, bool]:
    """Makespan of the round without and with its upload, and whether the fast clock was exact alone."""
    got = _Clock(ct).run()
    if got is not None:
        return got[0], got[1], True
    t_prefix, t_full = flat_makespans(_FlatRound(ct), (True, True))
    assert t_prefix is not None and t_full is not None
    return t_prefix, t_full, False


def flat_makespans(flat: _FlatRound, need: tuple[bool, bool]) -> tuple[float | None, float | None]:
    """Makespans of the round without and with its upload, each scheduled over the whole round.

    ``need`` says which of the two are wanted; the other comes back as None unless it
    costs nothing extra (the upload went behind every training action on its resources).
    """
    n, split = len(flat.res), flat.split
    if not need[1]:
        if flat.fork is not None:  # the round with its upload was clocked: go on from where they part
            return max(flat.resume(), default=0.0), None
        t_prefix = max(flat.run(split)[0], default=0.0)
        return t_prefix, (t_prefix if split == n else None)  # no upload: both are the same
    end, ready = flat.run(n, fork=split)
    t_full = max(end, default=0.0)
    if split == n:
        return t_full, t_full
    # without the upload the rest runs the same, unless an upload went ahead of a training
    # action on some node or link (then the round without it is scheduled on its own)
    import numpy as np

    res, rdy = np.asarray(flat.res[:split]), np.asarray(ready[:split])
    last = {r: rdy[res == r].max(initial=-math.inf) for r in set(flat.res[split:])}
    if all(ready[i] >= last[flat.res[i]] for i in range(split, n)):
        return max(end[:split], default=0.0), t_full
    if not need[0]:
        return None, t_full
    return max(flat.resume(), default=0.0), t_full


# ---------------------------------------------------------------------------------- a plan in context


@dataclass
class PlanContext:
    """A candidate's plan placed on the scenario: what the walk and the predictor need."""

    plan: Plan
    layout: Layout
    topo: Topology
    variant: tuple
    costs: StageCosts
    in_shape: tuple[int, ...]
    x_esize: int
    y_esize: int
    act_esize: int
    data_nodes: list[str]          # nodes that hold data in the scenario
    train_nodes: list[str]         # nodes that train (the server alone when data is collected)
    samples: dict[str, int]
    batches: dict[str, list[int]]
    fed_round: list[int]
    fed_step: list[int]
    fed_step_every: list[int]
    stages: tuple = ()
    input_grad: list[bool] = field(default_factory=list)
    out_grad: list[bool] = field(default_factory=list)
    state_bytes: list[int] = field(default_factory=list)
    opt_flops: list[int] = field(default_factory=list)       # one optimizer step of a replica, per stage
    opt_states: int = 0  # optimizer buffers per trainable parameter (SGD momentum 1, Adam 2)
    float_elements: list[int] = field(default_factory=list)  # floats a FedAvg averages, per stage
    features: bool = False
    junction_stage: int | None = None
    independent_paths: bool = False  # as Engine.independent_paths: no replica or node shared between data nodes
    _probes: dict[tuple, StageProbe] = field(default_factory=dict)
    walk_key: str = ""  # the plan with round-level FedAvg every round (see Planner.round_cost)

    def probe(self, s: int, shape: tuple[int, ...]) -> StageProbe:
        """Stage ``s`` on an input of ``shape`` (cached per context for the walk's hot path)."""
        key = (s, shape)
        hit = self._probes.get(key)
        if hit is None:
            st = self.stages[s]
            hit = self._probes[key] = self.costs.probe(self.variant, st.start, st.end, shape, self.input_grad[s],
                                                       s == len(self.stages) - 1)
        return hit


@dataclass
class RoundCost:
    """Costs of one kind of round: FLOPs/bytes/energy per node and link, and its makespan."""

    totals: Totals
    makespan: float
    exact_fast: bool  # the block clock sufficed (no full-round scheduling was needed)
    raw_bytes: int = 0  # bytes of raw samples that left a data node (collected data, streamed inputs)


@dataclass
class WalkedRound:
    """A walked round: its costs without and with the end-of-round upload, and the activations seen.

    The makespans are clocked on demand (:meth:`clock`): a plan that uploads every round never
    needs the round without its upload, and where the whole round has to be scheduled in
    full, each of the two is a separate schedule.
    """

    cost: dict[bool, RoundCost]
    activations: dict[tuple[int, int], int]
    compressed: Compressed | None = None
    _flat: _FlatRound | None = None

    def clock(self, uploads: set[bool], try_fast: bool = True) -> None:
        """Fill in the makespans of the rounds ``uploads`` asks for (False: without, True: with the upload).

        ``try_fast=False`` goes straight to the whole-round clock (the caller knows that the
        block clock gave up on another round of the same plan).
        """
        if all(not math.isnan(self.cost[u].makespan) for u in uploads):
            return
        assert self.compressed is not None
        if self._flat is None:
            ct = self.compressed
            got = None
            if try_fast:
                got = _Clock(ct, sum((hi - lo) * (1 + extra) for lo, hi, extra in ct.blocks) // 8).run()
            if got is not None:
                self.cost[False].makespan, self.cost[True].makespan = got
                self.compressed = None  # both known: the trace is no longer needed
                return
            self._flat = _FlatRound(self.compressed)
            for u in (False, True):
                self.cost[u].exact_fast = False
        want = tuple(u in uploads and math.isnan(self.cost[u].makespan) for u in (False, True))
        for u, t in zip((False, True), flat_makespans(self._flat, want)):  # type: ignore[arg-type]
            if t is not None:
                self.cost[u].makespan = t
        if all(not math.isnan(self.cost[u].makespan) for u in (False, True)):
            self.compressed = self._flat = None


@dataclass
class Prediction:
    """One candidate's predicted costs: the CSV row, plus per-node detail."""

    row: dict[str, Any]
    peak_memory: dict[str, int]
    per_node: dict[str, dict[str, float]]
    per_link: dict[str, dict[str, float]]
    fast_clock: bool


class Planner:
    """Predicts the costs of plan candidates for one scenario, sharing data sizes and stage costs."""

    def __init__(self, scn: Scenario, dataset: Dataset | None = None) -> None:
        from flexpl.data import load_data, partition
        from flexpl.engine.simulator import build_topology
        from flexpl.models import DEFAULT_CUTS

        self.scn = scn
        self.data = dataset or load_data(scn.data, scn.seed)
        self.topo = build_topology(scn)
        spec = scn.model
        self.model_name = spec if isinstance(spec, str) else str(spec.get("name", ""))
        self.costs = StageCosts(spec, self.data.num_classes, scn.seed)
        self.plain = (self.data.input_shape, None, 1)
        self.n_blocks = len(self.costs.model(self.plain).block_names)
        self.default_cut = min(DEFAULT_CUTS.get(self.model_name, 1), self.n_blocks - 1)
        d = scn.data
        parts = partition(self.data.train_y.numpy(), len(scn.data_nodes), d.partition.kind, seed=scn.seed,
                          alpha=d.partition.alpha, shards_per_node=d.partition.shards_per_node,
                          min_size=d.partition.min_samples)
        self.samples = {n: len(p) for n, p in zip(scn.data_nodes, parts)}
        self.x_esize = self.data.train_x.element_size()
        self.y_esize = self.data.train_y.element_size()
        self._walks: dict[tuple, WalkedRound] = {}
        self._contexts: dict[str, PlanContext] = {}
        # candidates cost_candidates could not cost here: {"plan", "family", "reason"} (skipped.csv)
        self.skipped: list[dict[str, str]] = []

    def candidates(self) -> list[Candidate]:
        """Every candidate of :func:`enumerate_candidates`, plus the scenario's own plan if it is explicit."""
        out = enumerate_candidates(self.topo, self.n_blocks)
        if self.scn.plan is not None:
            own = self.scn.plan.model_dump(exclude_none=True, exclude_defaults=True)
            out.insert(0, Candidate(f"scenario: {self.scn.strategy} {own}", self.scn.strategy, own, "scenario"))
        return out

    def optimizer_for(self, strategy: str | None) -> Any:
        """The optimizer a run of ``strategy`` uses: the scenario's, with that strategy's ``strategy_overrides``.

        The scenario's own strategy already has its overrides applied (``load_scenario``);
        another strategy gets its own on top of the scenario's values, as ``flexpl compare`` does.
        """
        from flexpl.config import OptimizerCfg, apply_strategy_overrides

        if strategy is None or strategy == self.scn.strategy:
            return self.scn.training.optimizer
        data = self.scn.resolved()
        data["strategy"] = strategy
        apply_strategy_overrides(data)
        return OptimizerCfg.model_validate(data["training"]["optimizer"])

    def context(self, cand: Candidate) -> PlanContext:
        """Build and place the candidate's plan exactly as ``simulator.setup`` does."""
        from flexpl.config import PlanCfg
        from flexpl.costs.flops import optimizer_flops
        from flexpl.engine.core import patch_grid
        from flexpl.plan import build_plan, place

        try:
            cfg = PlanCfg.model_validate(cand.plan).model_dump(exclude_none=True) if cand.plan else None
        except Exception as exc:  # pydantic's error, as one line
            raise UserError(f"plan: {exc}".splitlines()[0]) from None
        plan = build_plan(cand.strategy, cfg, self.topo, self.n_blocks, self.default_cut)
        key = repr(plan)
        hit = self._contexts.get(key)
        if hit is not None:
            return hit
        scn, tr = self.scn, self.scn.training
        opt = self.optimizer_for(cand.strategy)
        data_nodes = list(scn.data_nodes)
        in_shape = self.data.input_shape
        samples = dict(self.samples)
        variant = self.plain
        if plan.junction == "features":
            _, h, w = in_shape
            grid = patch_grid(len(data_nodes), h, w)
            if grid is None:
                raise UserError(f"plan.junction: cannot cut {h}x{w} images into {len(data_nodes)} equal patches; "
                                "use a number of data nodes that divides the image")
            in_shape = (in_shape[0], h // grid[0], w // grid[1])
            variant = (in_shape, plan.stages[1].start, len(data_nodes))
            samples = dict.fromkeys(data_nodes, len(self.data.train_y))
        train_nodes = [self.topo.server] if plan.collect_data else data_nodes
        train_samples = {self.topo.server: sum(samples.values())} if plan.collect_data else samples
        layout = place(plan, self.topo, train_nodes)
        weights = [self.costs.weights(variant, st.start, st.end) for st in plan.stages]
        has_params = [w[0] > 0 for w in weights]
        n_stages = len(plan.stages)
        input_grad = [any(has_params[:s]) for s in range(n_stages)]
        junction = next((s for s in range(1, n_stages) if len(layout.replicas[s]) < len(layout.replicas[s - 1])),
                        None)
        fed_round = [s for s, x in enumerate(plan.stages) if x.sync.kind == "fedavg" and x.sync.unit == "round"]
        fed_step = [s for s, x in enumerate(plan.stages) if x.sync.kind == "fedavg" and x.sync.unit == "step"]
        ctx = PlanContext(
            plan=plan, layout=layout, topo=self.topo, variant=variant, costs=self.costs, in_shape=in_shape,
            x_esize=self.x_esize, y_esize=self.y_esize, act_esize=4, data_nodes=data_nodes,
            train_nodes=train_nodes, samples=samples,
            batches={n: batch_sizes(k, tr.local_epochs, tr.batch_size, tr.max_steps_per_round)
                     for n, k in train_samples.items()},
            fed_round=fed_round, fed_step=fed_step, fed_step_every=[plan.stages[s].sync.every for s in fed_step],
            stages=plan.stages, input_grad=input_grad,
            out_grad=[has_params[s] or input_grad[s] for s in range(n_stages)],
            state_bytes=[w[2] for w in weights], features=plan.junction == "features", junction_stage=junction,
            opt_flops=[optimizer_flops(self.costs.weights(variant, st.start, st.end, trainable_count=True)[0],
                                       opt.name, opt.momentum, opt.weight_decay)
                       for st in plan.stages],
            opt_states=2 if opt.name == "adam" else (1 if opt.momentum > 0 else 0),
            float_elements=[self.costs.float_elements(variant, st.start, st.end) for st in plan.stages],
            independent_paths=plan.junction != "features" and all(
                st.replication == "per_node" and st.host == "own" for st in plan.stages))
        # gradients travel in the dtype of the activations they belong to (float32 in the zoo)
        ctx.act_esize = self.costs.probe(variant, plan.stages[0].start, plan.stages[0].end,
                                         (1, *in_shape), False).out_esize
        self._contexts[key] = ctx
        return ctx

    def round_kinds(self, ctx: PlanContext) -> Counter:
        """How many rounds of each kind the scenario runs: (clients, download first, upload last, collect)."""
        from flexpl.engine.core import select_clients

        scn, tr, plan = self.scn, self.scn.training, ctx.plan
        every = max([plan.stages[s].sync.every for s in ctx.fed_round] or [1])
        relay = plan.schedule == "sequential" and any(st.sync.kind == "relay" for st in plan.stages)
        kinds: Counter = Counter()
        synced, holder = True, None
        for rnd in range(1, tr.rounds + 1):
            selected = tuple(ctx.train_nodes if plan.collect_data
                             else select_clients(ctx.train_nodes, tr.clients_per_round, scn.seed, rnd))
            upload = rnd % every == 0 or rnd == tr.rounds
            kinds[(selected, synced, upload, holder if relay else None, plan.collect_data and rnd == 1)] += 1
            synced = upload
            if plan.schedule == "sequential":
                holder = selected[-1]
        return kinds

    def round_cost(self, ctx: PlanContext, kind: tuple) -> WalkedRound:
        """Walk one kind of round and cost it, with and without its end-of-round upload.

        Walked once per (plan, clients, download, relay holder, collect): plans that differ
        only in their FedAvg period share walks, since the period only decides which rounds sync.
        """
        selected, download, _upload, holder, collect = kind
        if not ctx.walk_key:
            ctx.walk_key = repr((_round_synced(ctx.plan), ctx.opt_flops))
        key = (ctx.walk_key, selected, download, holder, collect)
        hit = self._walks.get(key)
        if hit is None:
            from flexpl.costs.trace import COMPUTE, Totals

            walk = ShapeWalk(ctx)
            walk.relay_holder = holder
            ct = walk.walk(selected, download, collect)
            repeat = ct.repeat()
            prefix = Totals.empty(self.topo)
            prefix.add_actions(_merged(ct.trace, 0, ct.split, repeat), self.topo)
            full = _copy_totals(prefix)
            full.add_actions(_merged(ct.trace, ct.split, len(ct.trace), repeat), self.topo)
            # raw samples leave a data node as collected data, as a first stage's input, or as the
            # "activation" of an empty front stage (cut 0), i.e. into a stage that starts at block 0
            t, data = ct.trace, set(ctx.data_nodes)
            raw_into = {f"s{s}r{r}" for s, st in enumerate(ctx.stages) if st.start == 0
                        for r in range(len(ctx.layout.replicas[s]))}
            raw = sum(t.amount[i] * repeat[i] for i in range(len(t))
                      if t.kind[i] != COMPUTE and t.src[i] in data
                      and (t.what[i] in ("data", "input") or (t.what[i] == "activation" and t.label[i] in raw_into)))
            hit = self._walks[key] = WalkedRound({False: RoundCost(prefix, math.nan, True, raw),
                                                  True: RoundCost(full, math.nan, True, raw)}, ct.activations, ct)
        return hit

    def predict(self, cand: Candidate) -> Prediction:
        """Predicted costs of one candidate for every round of the scenario (see the CSV columns)."""
        # The walk and the clock allocate many small tuples and lists but make no reference
        # cycles; left on, the cyclic GC rescans the growing traces again and again (3x slower).
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._predict(cand)
        finally:
            if enabled:
                gc.enable()

    def _predict(self, cand: Candidate) -> Prediction:
        from flexpl.costs.trace import Totals, bill

        t0 = time.perf_counter()
        scn, topo = self.scn, self.topo
        ctx = self.context(cand)
        kinds = self.round_kinds(ctx)
        total = Totals.empty(topo)
        sim_time = 0.0
        raw_bytes = 0
        fast = True
        activations: dict[tuple[int, int], int] = {}
        walks = [(self.round_cost(ctx, kind), kind[2] and bool(ctx.fed_round), count) for kind, count in kinds.items()]
        needs: dict[int, tuple[WalkedRound, set[bool]]] = {}
        for walked, upload, _ in walks:
            needs.setdefault(id(walked), (walked, set()))[1].add(upload)
        fast_ok = True  # rounds of one plan differ little: once the block clock gives up, skip it
        for walked, uploads in needs.values():
            walked.clock(uploads, fast_ok)
            fast_ok = fast_ok and walked.cost[True].exact_fast
        for walked, upload, count in walks:
            rc = walked.cost[upload]
            _add_scaled(total, rc.totals, count)
            sim_time += rc.makespan * count
            raw_bytes += rc.raw_bytes * count
            fast = fast and rc.exact_fast
            for k, v in walked.activations.items():
                activations[k] = max(activations.get(k, 0), v)
        rounds = scn.training.rounds
        # the simulator's definition (costs.trace.bill); evaluation is not predicted
        b = bill(total, topo, sim_time, scn.energy.include_idle, False)
        idle = b["idle_j"]
        node_energy = {n: b["per_node"][n]["energy_j"] for n in total.node}
        energy = b["energy_j"]
        device_energy = sum(node_energy[n] for n in scn.data_nodes)
        device_bytes = max(total.node[n]["bytes_sent"] + total.node[n]["bytes_received"] for n in scn.data_nodes)
        peak, params = self.memory(ctx, activations)
        fits = all(peak[n] <= topo.nodes[n].memory_bytes for n in topo.nodes)
        params_total = sum(self.costs.weights(ctx.variant, ctx.stages[s].start, ctx.stages[s].end)[0]
                           for s, reps in enumerate(ctx.layout.replicas) for _ in reps)
        row: dict[str, Any] = {
            "plan": cand.label, "strategy": ctx.plan.name, "family": cand.family, "cut": cand.cut,
            "grouping": cand.grouping, "sync_every": cand.sync_every or "", "stages": len(ctx.stages),
            "flops_per_round": _per(total.flops, rounds), "bytes_per_round": _per(total.bytes, rounds),
            "sim_time_s_per_round": sim_time / rounds, "energy_j_per_round": energy / rounds,
            "device_energy_j_per_round": device_energy / rounds,
            "energy_j_compute_per_round": total.energy_compute / rounds,
            "energy_j_comm_per_round": total.energy_comm / rounds,
            "max_device_bytes_per_round": _per(device_bytes, rounds),
            "raw_bytes_per_round": _per(raw_bytes, rounds), "raw_data_moved": raw_bytes > 0,
            "peak_memory_bytes_max": max(peak.values()),
            "peak_memory_device_max": max(peak[n] for n in scn.data_nodes),
            "device_memory_fits": fits, "params_total": params_total,
            "max_params_total": max(params.values()), "rounds": rounds,
            "flops_total": int(total.flops), "bytes_total": int(total.bytes), "sim_time_s": sim_time,
            "energy_j_total": energy, "device_energy_j_total": device_energy,
            "predict_ms": 1000 * (time.perf_counter() - t0),
        }
        per_node = {n: {**d, "energy_j": node_energy[n], "energy_j_idle": idle[n]} for n, d in total.node.items()}
        return Prediction(row, peak, per_node, total.link, fast)

    def memory(self, ctx: PlanContext, activations: dict[tuple[int, int], int]
               ) -> tuple[dict[str, int], dict[str, int]]:
        """Peak bytes per node and parameters per node.

        A node holds, for every replica it hosts: the stage's weights (state dict), a
        gradient per trainable parameter, the optimizer state (SGD momentum: one buffer;
        Adam: two), and the activations autograd saves for its largest batch; the
        aggregator also keeps the averaged copy of every FedAvg stage. A joint step runs every
        forward before any backward, so the activations of all replicas on a node coexist.
        """
        states = ctx.opt_states
        peak = dict.fromkeys(self.topo.nodes, 0)
        params = dict.fromkeys(self.topo.nodes, 0)
        for s, reps in enumerate(ctx.layout.replicas):
            st = ctx.stages[s]
            n_params, trainable, state = self.costs.weights(ctx.variant, st.start, st.end)
            for r in reps:
                peak[r.host] += state + trainable * (1 + states) + activations.get((s, r.index), 0)
                params[r.host] += n_params
            agg = ctx.layout.aggregators[s]
            if agg is not None:
                peak[agg] += state
            for a in dict.fromkeys(ctx.layout.agg_of[s].values()) if ctx.layout.grouped(s) else ():
                peak[a] += state  # each group head keeps its group's average
        return peak, params


def _round_synced(plan: Plan) -> Plan:
    """The plan with round-level FedAvg periods set to 1: the period decides which rounds sync, not what a round does."""
    from dataclasses import replace

    return replace(plan, stages=tuple(
        replace(st, sync=replace(st.sync, every=1)) if st.sync.kind == "fedavg" and st.sync.unit == "round" else st
        for st in plan.stages))


def _merged(t: Trace, lo: int, hi: int, repeat: list[int]) -> Trace:
    """Actions ``lo..hi-1`` of ``t``, each counted ``repeat[i]`` times, merged into one per (kind, node/link, sender, receiver).

    ``Totals.add_actions`` adds FLOPs, bytes, busy time and energy per node and link, which
    only depend on those four and on the summed amount and duration: the same totals (FLOPs
    and bytes exactly, times and energy to rounding) from a few dozen actions.
    """
    from flexpl.costs.trace import Trace

    acc: dict[tuple, list] = {}
    kind, res, src, dst, amount, dur, wasted = t.kind, t.resource, t.src, t.dst, t.amount, t.duration, t.wasted
    for i in range(lo, hi):
        key = (kind[i], res[i], src[i], dst[i])
        k = repeat[i]
        a = acc.get(key)
        if a is None:
            acc[key] = [amount[i] * k, dur[i] * k, wasted[i] * k]
        else:
            a[0] += amount[i] * k
            a[1] += dur[i] * k
            a[2] += wasted[i] * k
    out = Trace()
    for (kd, r, s, d), (a, du, w) in acc.items():
        out.kind.append(kd)
        out.resource.append(r)
        out.src.append(s)
        out.dst.append(d)
        out.amount.append(a)
        out.duration.append(du)
        out.wasted.append(w)
        out.deps.append(())
        out.what.append("")
        out.label.append("")
    return out


def _copy_totals(t: Totals) -> Totals:
    """A copy of ``t`` (its counters are numbers in two levels of dicts: cheaper than ``deepcopy``)."""
    from dataclasses import replace

    return replace(t, node={n: dict(d) for n, d in t.node.items()}, link={n: dict(d) for n, d in t.link.items()})


def _per(total: int, rounds: int) -> int | float:
    return total // rounds if total % rounds == 0 else total / rounds


def _add_scaled(acc: Totals, t: Totals, k: int) -> None:
    """``acc += k * t`` for every counter (k rounds of the same kind)."""
    for name in ("flops", "bytes", "energy_compute", "energy_comm", "wasted_flops", "wasted_bytes", "wasted_energy"):
        if hasattr(t, name):
            setattr(acc, name, getattr(acc, name) + k * getattr(t, name))
    for mine, theirs in ((acc.node, t.node), (acc.link, t.link)):
        for name, d in theirs.items():
            for key, v in d.items():
                mine[name][key] += k * v


# ---------------------------------------------------------------------------------- constraints, choice


@dataclass(frozen=True)
class Constraint:
    """``column op value`` on a predicted column, e.g. ``energy_j_per_round<=50``."""

    text: str
    column: str
    op: str
    value: float | bool

    def holds(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` meets the constraint."""
        return bool(_OPS[self.op](row[self.column], self.value))

    def shortfall(self, row: dict[str, Any]) -> float:
        """How far ``row`` misses, relative to the bound (0 if met; 1 for a false boolean)."""
        if self.holds(row):
            return 0.0
        if isinstance(self.value, bool):
            return 1.0
        return abs(float(row[self.column]) - self.value) / max(abs(self.value), 1e-300)


_OPS: dict[str, Callable[[Any, Any], bool]] = {"<=": operator.le, ">=": operator.ge, "==": operator.eq,
                                               "<": operator.lt, ">": operator.gt}
_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:(<=|>=|==|<|>)\s*(\S.*?))?\s*$")


def parse_constraint(text: str) -> Constraint:
    """Parse ``COLUMN<=VALUE`` (also ``>=``, ``<``, ``>``, ``==``) or a bare boolean column name."""
    allowed = ", ".join((*NUMERIC_COLUMNS, *BOOL_COLUMNS))
    m = _EXPR.match(text)
    if not m:
        raise UserError(f"--constraint '{text}': write COLUMN<=VALUE (or >=, <, >, ==) or a boolean column; "
                        f"allowed columns: {allowed}")
    col, op, raw = m.group(1), m.group(2), m.group(3)
    if col not in NUMERIC_COLUMNS and col not in BOOL_COLUMNS:
        raise UserError(f"--constraint '{text}': unknown column '{col}'; allowed columns: {allowed}")
    if col in BOOL_COLUMNS:
        if op is None:
            return Constraint(text, col, "==", True)
        if op != "==" or raw.lower() not in ("true", "false", "1", "0"):
            raise UserError(f"--constraint '{text}': {col} is true or false; write '{col}' or '{col}==false'; "
                            f"allowed columns: {allowed}")
        return Constraint(text, col, "==", raw.lower() in ("true", "1"))
    if op is None:
        raise UserError(f"--constraint '{text}': {col} is a number; compare it, e.g. {col}<=1e6; "
                        f"allowed columns: {allowed}")
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"--constraint '{text}': '{raw}' is not a number; allowed columns: {allowed}") from None
    if not math.isfinite(value):
        raise UserError(f"--constraint '{text}': the bound must be a finite number; allowed columns: {allowed}")
    return Constraint(text, col, op, value)


MEMORY_FITS = Constraint("device_memory_fits", "device_memory_fits", "==", True)


def choose(rows: list[dict[str, Any]], constraints: Sequence[Constraint], objective: str) -> dict[str, Any]:
    """Mark ``feasible``, ``pareto`` and ``recommended`` on every row; return the recommended row.

    Feasible: fits in every node's memory and meets every constraint. Pareto: no feasible
    plan is at least as good in the objective, bytes and time and better in one.
    Recommended: the feasible plan with the lowest objective (ties: fewer bytes, less time).
    Raises a one-line UserError naming the closest miss when nothing is feasible.
    """
    col = OBJECTIVES[objective]
    every = [MEMORY_FITS, *constraints]
    for r in rows:
        r["feasible"] = all(c.holds(r) for c in every)
        r["pareto"] = r["recommended"] = False
    feasible = [r for r in rows if r["feasible"]]
    if not feasible:
        raise UserError(_infeasible(rows, every))
    axes = list(dict.fromkeys((col, "bytes_per_round", "sim_time_s_per_round")))
    for r in feasible:
        r["pareto"] = not any(all(o[a] <= r[a] for a in axes) and any(o[a] < r[a] for a in axes)
                              for o in feasible if o is not r)
    best = min(feasible, key=lambda r: (r[col], r["bytes_per_round"], r["sim_time_s_per_round"]))
    best["recommended"] = True
    return best


def _infeasible(rows: list[dict[str, Any]], constraints: Sequence[Constraint]) -> str:
    """One line: no plan is feasible; which plan comes closest and the constraint it misses most."""
    def score(r: dict[str, Any]) -> tuple[float, float]:
        s = [c.shortfall(r) for c in constraints]
        return max(s), sum(s)

    near = min(rows, key=score)
    miss = max(constraints, key=lambda c: c.shortfall(near))
    val = near[miss.column]
    shown = str(val).lower() if isinstance(val, bool) else f"{val:.4g}"
    return (f"no plan meets the constraints ({len(rows)} candidates); the closest is '{near['plan']}', "
            f"which misses '{miss.text}' ({miss.column} = {shown}); relax that constraint")


# ---------------------------------------------------------------------------------- output


def _table(rows: list[dict[str, Any]], objective: str, top: int, title: str) -> Any:
    from rich.table import Table

    from flexpl.cli import _fmt

    col = OBJECTIVES[objective]
    cols = list(dict.fromkeys((col, "bytes_per_round", "sim_time_s_per_round", "energy_j_per_round",
                               "device_energy_j_per_round", "max_device_bytes_per_round",
                               "peak_memory_device_max")))
    if any(r.get("accuracy") is not None for r in rows):
        cols.append("accuracy")
    t = Table(title=title, title_justify="left")
    t.add_column("plan")
    for c in cols:
        t.add_column(c.replace("_per_round", "/round"), justify="right")
    for r in rows[:top]:
        mark = "* " if r.get("recommended") else ""
        t.add_row(mark + r["plan"], *(_fmt(r.get(c)) if r.get(c) is not None else "-" for c in cols))
    return t


def plot_pareto(rows: list[dict[str, Any]], objective: str, path: Path) -> None:
    """``pareto.png``: the objective against bytes and against time; the front highlighted."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flexpl.results import atomic_write

    col = OBJECTIVES[objective]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, x in zip(axes, ("bytes_per_round", "sim_time_s_per_round")):
        for feasible, style in ((False, {"c": "lightgrey", "marker": "x"}), (True, {"c": "tab:blue", "s": 14})):
            pts = [r for r in rows if r["feasible"] == feasible and not r["pareto"]]
            ax.scatter([r[x] for r in pts], [r[col] for r in pts], label="infeasible" if not feasible
                       else "feasible", **style)
        front = sorted((r for r in rows if r["pareto"]), key=lambda r: r[x])
        ax.plot([r[x] for r in front], [r[col] for r in front], "o-", c="tab:red", label="Pareto front")
        for r in front:
            ax.annotate(r["plan"], (r[x], r[col]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        best = next(r for r in rows if r["recommended"])
        ax.scatter([best[x]], [best[col]], marker="*", s=220, c="gold", edgecolors="k", zorder=5,
                   label="recommended")
        # log axes spread plans over orders of magnitude; a zero (e.g. free energy) needs linear
        ax.set_xscale("log" if all(r[x] > 0 for r in rows) else "linear")
        ax.set_yscale("log" if all(r[col] > 0 for r in rows) else "linear")
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(col.replace("_", " "))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"flexpl plan: {objective} against bytes and time (per round)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def write_best(path: Path, scn: Scenario, cand: Candidate, row: dict[str, Any], objective: str) -> None:
    """``best.yaml``: the recommended plan as a complete scenario (``flexpl run best.yaml`` runs it)."""
    import yaml

    from flexpl.config import validate_scenario
    from flexpl.results import atomic_write

    data = candidate_data(scn, cand)
    validate_scenario(data)  # a recommendation that does not load would be a bug, not a user error
    head = (f"# {scn.name}: plan recommended by `flexpl plan --objective {objective}`: {cand.label}\n"
            f"# predicted per round: {row['energy_j_per_round']:.4g} J, {row['sim_time_s_per_round']:.4g} s, "
            f"{row['bytes_per_round']:.4g} bytes, {row['flops_per_round']:.4g} FLOPs; "
            f"device energy {row['device_energy_j_per_round']:.4g} J\n"
            "# run it with: flexpl run best.yaml\n")
    atomic_write(path, head + yaml.safe_dump(data, sort_keys=False))


def validate(scn: Scenario, planner: Planner, cands: dict[str, Candidate], rows: list[dict[str, Any]], k: int,
             console: Any) -> None:
    """Train the ``k`` best feasible plans for min(rounds, 3) rounds; add their measured accuracy."""
    from flexpl.config import apply_strategy_overrides, validate_scenario
    from flexpl.engine.simulator import run, setup

    rounds = min(scn.training.rounds, 3)
    for r in rows:
        r.setdefault("accuracy", None)
        r.setdefault("validated_rounds", None)
    chosen = [r for r in rows if r["feasible"]][:k]
    for i, r in enumerate(chosen):
        data = candidate_data(scn, cands[r["plan"]])
        data["training"]["rounds"] = rounds
        if data.get("strategy") != scn.strategy:  # the scenario's own strategy has them applied already
            apply_strategy_overrides(data)
        sc = validate_scenario(data)
        console.print(f"validating [{i + 1}/{len(chosen)}] {r['plan']} ({rounds} rounds)")
        s = run(sc, st=setup(sc, dataset=planner.data)).summary
        r["accuracy"], r["validated_rounds"] = s["final_accuracy"], rounds


# ---------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Planner options (the CLI has already added scenario, --set, --seed, --out, --quiet)."""
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default="energy",
                        help="what the recommended plan minimises, per round (default: energy)")
    parser.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                        help="COLUMN<=VALUE (or >=, <, >, ==), e.g. energy_j_per_round<=50, or a boolean "
                             "column such as device_memory_fits (repeatable)")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="rows of the Pareto table (default 10)")
    parser.add_argument("--validate", type=int, default=0, metavar="K",
                        help="train the K best feasible plans for min(rounds, 3) rounds and add their accuracy")


def plan_scenario(scn: Scenario, constraints: Sequence[Constraint], objective: str,
                  dataset: Dataset | None = None, progress: Callable[[int, int], None] | None = None
                  ) -> tuple[Planner, list[Candidate], list[dict[str, Any]], dict[str, Any]]:
    """Cost every candidate, mark feasibility and the Pareto front; returns planner, candidates, rows, best."""
    planner, cands, rows = cost_candidates(scn, dataset, progress)
    best = choose(rows, constraints, objective)
    col = OBJECTIVES[objective]
    rows.sort(key=lambda r: (not r["feasible"], r[col], r["bytes_per_round"]))
    return planner, cands, rows, best


def cost_candidates(scn: Scenario, dataset: Dataset | None = None,
                    progress: Callable[[int, int], None] | None = None
                    ) -> tuple[Planner, list[Candidate], list[dict[str, Any]]]:
    """Predict every candidate of ``scn`` (each distinct plan once); returns planner, candidates, rows.

    Candidates that cannot run on this scenario are listed, with the reason, in ``planner.skipped``.
    """
    planner = Planner(scn, dataset)
    cands, rows = [], []
    all_cands = planner.candidates()
    seen: set[str] = set()
    for i, cand in enumerate(all_cands):
        try:
            key = repr(planner.context(cand).plan)
            if key in seen:  # the same plan reached twice (e.g. the scenario's own plan): cost it once
                continue
            seen.add(key)
            pred = planner.predict(cand)
        except UserError as exc:  # e.g. a feature junction the images cannot be cut for: not a candidate here
            planner.skipped.append({"plan": cand.label, "family": cand.family, "reason": str(exc)})
            continue
        cands.append(cand)
        rows.append(pred.row)
        if progress:
            progress(i + 1, len(all_cands))
    return planner, cands, rows


def main(args: argparse.Namespace) -> int:
    """flexpl plan: cost every candidate plan, print the Pareto front, write plans.csv, pareto.png, best.yaml."""
    from flexpl.cli import _console
    from flexpl.config import load_scenario
    from flexpl.results import prepare_out_dir, write_csv

    if args.top < 1:
        raise UserError(f"--top: must be a positive integer, got {args.top}")
    if args.validate < 0:
        raise UserError(f"--validate: must be 0 or a positive integer, got {args.validate}")
    constraints = [parse_constraint(c) for c in args.constraint]  # bad input fails before any work
    scn = load_scenario(args.scenario, args.set, None, args.seed)
    console = _console(args.quiet)
    out = Path(args.out or f"results/{scn.name}-plan")
    t0 = time.perf_counter()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]costing plans"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=args.quiet or not console.is_terminal, transient=True) as bar:
        task = bar.add_task("plans", total=None)
        planner, cands, rows = cost_candidates(scn, progress=lambda i, n: bar.update(task, completed=i, total=n))
    wall = time.perf_counter() - t0
    best = choose(rows, constraints, args.objective)  # raises the one-line "no plan meets ..." error
    rows.sort(key=lambda r: (not r["feasible"], r[OBJECTIVES[args.objective]], r["bytes_per_round"]))
    by_label = {c.label: c for c in cands}
    if args.validate:
        validate(scn, planner, by_label, rows, args.validate, console)
    out = prepare_out_dir(out)
    write_csv(out / "plans.csv", rows, list(CSV_COLUMNS))
    skipped_csv = out / "skipped.csv"
    write_csv(skipped_csv, planner.skipped, ["plan", "family", "reason"])
    plot_pareto(rows, args.objective, out / "pareto.png")
    write_best(out / "best.yaml", scn, by_label[best["plan"]], best, args.objective)
    front = [r for r in rows if r["pareto"]]
    n_feasible = sum(r["feasible"] for r in rows)
    console.print(_table(front, args.objective, args.top,
                         f"{scn.name}: Pareto-optimal plans ({len(front)} of {n_feasible} feasible, {len(rows)} "
                         f"costed in {wall:.2f} s), {args.objective} against bytes and time"))
    # the best feasible plan of every family, for context when one plan dominates the front
    families = list(dict.fromkeys(r["family"] for r in rows if r["feasible"]))
    per_family = [next(r for r in rows if r["feasible"] and r["family"] == f) for f in families]
    console.print(_table(per_family, args.objective, len(per_family),
                         f"best feasible plan of each family, by {args.objective}"))
    if getattr(scn.failures, "active", False):
        console.print("note: predictions assume no failures (the scenario's failure model is not costed)")
    if planner.skipped:  # said even with --quiet: a candidate that silently vanished would mislead
        import sys

        names = [s["plan"] for s in planner.skipped]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        reasons = "; ".join(dict.fromkeys(s["reason"] for s in planner.skipped[:5]))
        print(f"flexpl: warning: plan skipped {len(names)} candidate(s) that cannot run here ({shown}): "
              f"{reasons} -- every one and why in {skipped_csv}", file=sys.stderr)
    console.print(f"recommended ({args.objective}): {best['plan']} -> {out}/best.yaml")
    console.print(f"every plan in {out}/plans.csv, the front in {out}/pareto.png")
    return 0
