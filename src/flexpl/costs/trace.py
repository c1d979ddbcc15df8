"""The trace of one round: every compute and every hop of every transfer, with dependencies.

The engine records actions as it runs (:class:`Recorder`); ``costs/clock/`` then places them on
the virtual clock and ``costs/bill.py`` totals FLOPs, bytes, time and energy. It only observes:
nothing here changes what the engine computes.

Clock rules (see docs/background.md): a node computes ``FLOPs / flops_per_s``; a hop
takes ``latency + 8 * bytes / bandwidth``; every node and every link does one thing at a
time, first come first served; independent work overlaps. A full-duplex link is two
resources, one per direction (see ``Topology.hop_resource``); a half-duplex one is one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flexpl.system.topology import Topology

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
    wasted: list[int] = field(default_factory=list)     # part of ``amount`` done and thrown away

    def __len__(self) -> int:
        return len(self.kind)


Event = int | None




class Recorder:
    """Collects a round's actions; the engine calls ``compute`` and ``transfer``."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.trace = Trace()
        self.base = 0  # event ids are global; this round's trace holds ids base, base+1, ...
        # failure model knobs, set per round by the engine (defaults: no failures)
        self.slowdown: dict[str, float] = {}       # node -> compute-time multiplier (stragglers)
        self.loss: dict[str, float] = {}           # link -> probability that one transmission is lost
        self.loss_rng: np.random.Generator | None = None
        self.wasting = False                       # actions recorded now are thrown away
        # tries each hop of the last ``transfer`` took (1 = no loss), an observation for the
        # distributed transport, which resends a lost hop as often as the bill counts it
        self.last_tries: list[int] = []

    @contextmanager
    def thrown_away(self) -> Iterator[None]:
        """Record the actions inside the block as wasted work (e.g. a model sent to a node that then drops out)."""
        old, self.wasting = self.wasting, True
        try:
            yield
        finally:
            self.wasting = old

    def mark_wasted(self, first: int, predicate: Callable[[int], bool]) -> None:
        """Mark this round's actions from global id ``first`` on that satisfy ``predicate(local id)`` as wasted."""
        t = self.trace
        for i in range(max(first - self.base, 0), len(t)):
            if predicate(i):
                t.wasted[i] = t.amount[i]

    @property
    def next_id(self) -> int:
        """Global id the next recorded action will get."""
        return self.base + len(self.trace)

    def _deps(self, deps: Iterable[Event]) -> tuple[int, ...]:
        # events of earlier rounds are done before this round starts: drop them
        base = self.base
        kept = {d for d in deps if d is not None and d >= base}
        return tuple(sorted(kept)) if len(kept) > 1 else tuple(kept)

    def _add(self, kind: int, resource: str, duration: float, deps: tuple[int, ...], what: str,
             amount: int, src: str, dst: str, label: str, wasted: int = 0) -> int:
        t = self.trace
        base = self.base
        t.kind.append(kind)
        t.resource.append(resource)
        t.duration.append(duration)
        t.deps.append(tuple([d - base for d in deps]) if base else tuple(deps))
        t.what.append(what)
        t.amount.append(amount)
        t.src.append(src)
        t.dst.append(dst)
        t.label.append(label)
        t.wasted.append(amount if self.wasting else wasted)
        return self.base + len(t.kind) - 1

    def compute(self, node: str, flops: int, deps: Iterable[Event], what: str, label: str = "") -> int:
        """Record ``flops`` of work on ``node`` after ``deps``; returns the action id."""
        duration = flops / self.topo.nodes[node].flops_per_s * self.slowdown.get(node, 1.0)
        return self._add(COMPUTE, node, duration, self._deps(deps), what, flops, node, node, label)

    def transfer(self, src: str, dst: str, nbytes: int, deps: Iterable[Event], what: str,
                 label: str = "") -> Event:
        """Record a transfer routed hop by hop; returns the id of the last hop (None if src == dst).

        With a loss probability on a hop's link, the hop is tried until one try arrives
        (``loss_rng``'s geometric draw): all tries are billed, the lost ones as wasted. The
        tries per hop are kept in ``last_tries`` (what the distributed transport resends).
        """
        hops = self.topo.route(src, dst)
        tried: list[int] = []
        self.last_tries = tried
        if not hops:
            d = self._deps(deps)
            return d[-1] if len(d) == 1 else (self.compute(src, 0, d, "join") if d else None)
        prev = self._deps(deps)
        ev: int = -1
        loss = self.loss
        for h in hops:
            tries = 1
            p = loss.get(h.link, 0.0) if loss else 0.0
            if p > 0 and self.loss_rng is not None:  # lost transmissions are resent until one arrives
                tries = int(self.loss_rng.geometric(1.0 - p))
            duration = tries * (h.latency_s + 8.0 * nbytes / h.bandwidth_bps)
            ev = self._add(HOP, h.resource or h.link, duration, prev, what, tries * nbytes, h.src, h.dst, label,
                           wasted=(tries - 1) * nbytes)
            tried.append(tries)
            prev = (ev,)
        return ev

    def take(self) -> Trace:
        """Hand over the round's trace and start a new one."""
        t, self.trace = self.trace, Trace()
        self.base += len(t)
        return t


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


def timeline_rows(trace: Any, starts: list[float], ends: list[float], round_index: int) -> list[dict[str, Any]]:
    """One row per action of a round's trace: resource (node or link), kind, times, amount (timeline.csv)."""
    rows = []
    for i in range(len(trace)):
        compute = trace.kind[i] == COMPUTE
        rows.append({"round": round_index, "resource": trace.resource[i],
                     "resource_kind": "node" if compute else "link", "what": trace.what[i],
                     "label": trace.label[i], "src": trace.src[i], "dst": trace.dst[i],
                     "start_s": starts[i], "end_s": ends[i],
                     "flops": trace.amount[i] if compute else 0, "bytes": 0 if compute else trace.amount[i]})
    return rows
