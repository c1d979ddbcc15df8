"""The trace of one round: every compute and every hop of every transfer, with dependencies.

The engine records actions as it runs; this module then places them on the virtual
clock and totals FLOPs, bytes, time and energy. It only observes: nothing here changes
what the engine computes.

Clock rules (see docs/background.md): a node computes ``FLOPs / flops_per_s``; a hop
takes ``latency + 8 * bytes / bandwidth``; every node and every link does one thing at a
time, first come first served; independent work overlaps.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

from flexpl.topology import Topology

COMPUTE, HOP = 0, 1


@dataclass
class Trace:
    """Actions of one round, in program order. Indices are action ids."""

    kind: list[int] = field(default_factory=list)
    resource: list[str] = field(default_factory=list)   # node name or link name
    duration: list[float] = field(default_factory=list)
    deps: list[tuple[int, ...]] = field(default_factory=list)
    what: list[str] = field(default_factory=list)
    amount: list[int] = field(default_factory=list)     # FLOPs (compute) or bytes (hop)
    src: list[str] = field(default_factory=list)        # compute: node; hop: sender
    dst: list[str] = field(default_factory=list)        # compute: node; hop: receiver
    label: list[str] = field(default_factory=list)      # e.g. "s1r0" (stage, replica) or the payload

    def __len__(self) -> int:
        return len(self.kind)


Event = int | None




class Recorder:
    """Collects a round's actions; the engine calls ``compute`` and ``transfer``."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.trace = Trace()
        self.base = 0  # event ids are global; this round's trace holds ids base, base+1, ...

    def _deps(self, deps: Iterable[Event]) -> tuple[int, ...]:
        # events of earlier rounds are done before this round starts: drop them
        return tuple(sorted({d for d in deps if d is not None and d >= self.base}))

    def _add(self, kind: int, resource: str, duration: float, deps: tuple[int, ...], what: str,
             amount: int, src: str, dst: str, label: str) -> int:
        t = self.trace
        t.kind.append(kind)
        t.resource.append(resource)
        t.duration.append(duration)
        t.deps.append(tuple(d - self.base for d in deps))
        t.what.append(what)
        t.amount.append(amount)
        t.src.append(src)
        t.dst.append(dst)
        t.label.append(label)
        return self.base + len(t.kind) - 1

    def compute(self, node: str, flops: int, deps: Iterable[Event], what: str, label: str = "") -> int:
        """Record ``flops`` of work on ``node`` after ``deps``; returns the action id."""
        duration = flops / self.topo.nodes[node].flops_per_s
        return self._add(COMPUTE, node, duration, self._deps(deps), what, flops, node, node, label)

    def transfer(self, src: str, dst: str, nbytes: int, deps: Iterable[Event], what: str,
                 label: str = "") -> Event:
        """Record a transfer routed hop by hop; returns the id of the last hop (None if src == dst)."""
        hops = self.topo.route(src, dst)
        if not hops:
            d = self._deps(deps)
            return d[-1] if len(d) == 1 else (self.compute(src, 0, d, "join") if d else None)
        prev = self._deps(deps)
        ev: int = -1
        for h in hops:
            duration = h.latency_s + 8.0 * nbytes / h.bandwidth_bps
            ev = self._add(HOP, h.link, duration, prev, what, nbytes, h.src, h.dst, label)
            prev = (ev,)
        return ev

    def take(self) -> Trace:
        """Hand over the round's trace and start a new one."""
        t, self.trace = self.trace, Trace()
        self.base += len(t)
        return t


def schedule(trace: Trace, t0: float) -> tuple[list[float], list[float]]:
    """Place every action on the virtual clock: start when its deps are done and its resource is free.

    Actions are taken in order of the time they become ready (ties by program order), so
    each resource serves its queue first come, first served.
    """
    n = len(trace)
    indeg = [len(d) for d in trace.deps]
    succ: list[list[int]] = [[] for _ in range(n)]
    for i, ds in enumerate(trace.deps):
        for d in ds:
            succ[d].append(i)
    ready = [t0] * n
    start = [0.0] * n
    end = [0.0] * n
    free: dict[str, float] = {}
    heap = [(t0, i) for i in range(n) if indeg[i] == 0]
    heapq.heapify(heap)
    while heap:
        t, i = heapq.heappop(heap)
        res = trace.resource[i]
        s = max(t, free.get(res, t0))
        e = s + trace.duration[i]
        start[i], end[i] = s, e
        free[res] = e
        for j in succ[i]:
            if e > ready[j]:
                ready[j] = e
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(heap, (ready[j], j))
    return start, end


@dataclass
class Totals:
    """Cumulative costs: totals and per node / per link."""

    flops: int = 0
    bytes: int = 0
    energy_compute: float = 0.0
    energy_comm: float = 0.0
    sim_time: float = 0.0
    node: dict[str, dict[str, float]] = field(default_factory=dict)
    link: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def empty(cls, topo: Topology) -> Totals:
        """Zeroed counters for every node and link of ``topo``."""
        return cls(node={n: {"flops": 0, "bytes_sent": 0, "bytes_received": 0, "energy_j": 0.0,
                             "energy_j_compute": 0.0, "energy_j_comm": 0.0, "busy_s": 0.0}
                         for n in topo.nodes},
                   link={n: {"bytes": 0, "busy_s": 0.0, "energy_j": 0.0} for n in topo.links})

    def add_round(self, trace: Trace, topo: Topology) -> tuple[list[float], list[float]]:
        """Schedule a round's trace after the current clock and add its costs; returns starts and ends."""
        start, end = schedule(trace, self.sim_time)
        for i in range(len(trace)):
            amount, dur = trace.amount[i], trace.duration[i]
            if trace.kind[i] == COMPUTE:
                node = self.node[trace.src[i]]
                ej = amount * topo.nodes[trace.src[i]].energy_per_flop()
                node["flops"] += amount
                node["busy_s"] += dur
                node["energy_j"] += ej
                node["energy_j_compute"] += ej
                self.flops += amount
                self.energy_compute += ej
            else:
                link = self.link[trace.resource[i]]
                bits = 8.0 * amount
                hop_prof = topo.links[trace.resource[i]][2]
                etx, erx = bits * hop_prof.tx_j_per_bit, bits * hop_prof.rx_j_per_bit
                link["bytes"] += amount
                link["busy_s"] += dur
                link["energy_j"] += etx + erx
                s, r = self.node[trace.src[i]], self.node[trace.dst[i]]
                s["bytes_sent"] += amount
                r["bytes_received"] += amount
                s["energy_j"] += etx
                s["energy_j_comm"] += etx
                r["energy_j"] += erx
                r["energy_j_comm"] += erx
                self.bytes += amount
                self.energy_comm += etx + erx
        if end:
            self.sim_time = max(self.sim_time, max(end))
        return start, end

    @property
    def energy(self) -> float:
        """Compute plus communication energy (idle is added by the caller when asked)."""
        return self.energy_compute + self.energy_comm
