"""A plan placed on a scenario (PlanContext), and the costs of one walked round."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from flexpl.costs.bill import Totals
from flexpl.costs.clock import BlockClock, FlatRound, flat_makespans
from flexpl.costs.trace import Compressed, Trace
from flexpl.plan.spec import Layout, Plan
from flexpl.planner.shapes import StageCosts, StageProbe
from flexpl.system.topology import Topology


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
    agg_flops: Any = None  # FLOPs of one aggregation (training.aggregator); None: FedAvg's

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
    _flat: FlatRound | None = None

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
                got = BlockClock(ct, sum((hi - lo) * (1 + extra) for lo, hi, extra in ct.blocks) // 8).run()
            if got is not None:
                self.cost[False].makespan, self.cost[True].makespan = got
                self.compressed = None  # both known: the trace is no longer needed
                return
            self._flat = FlatRound(self.compressed)
            for u in (False, True):
                self.cost[u].exact_fast = False
        want = tuple(u in uploads and math.isnan(self.cost[u].makespan) for u in (False, True))
        for u, t in zip((False, True), flat_makespans(self._flat, want)):  # type: ignore[arg-type]
            if t is not None:
                self.cost[u].makespan = t
        if all(not math.isnan(self.cost[u].makespan) for u in (False, True)):
            self.compressed = self._flat = None




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
