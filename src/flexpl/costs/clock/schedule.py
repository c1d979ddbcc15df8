"""The virtual clock: one loop places every action of a round on time, for the simulator and the planner.

A node computes ``FLOPs / flops_per_s``, a hop takes ``latency + 8 * bytes / bandwidth``;
every node and link does one thing at a time, first come first served (see
``costs/trace.py``). :func:`sweep` is that loop; :func:`schedule` runs it over a recorded
round (the simulator's clock), :func:`schedule_range` over a slice of one (the planner's
block clock, ``blocks.BlockClock``), and :class:`FlatRound` over a compressed round
(the planner's whole-round clock), so the three agree to the last bit.
"""

from __future__ import annotations

import heapq
import math

from flexpl.costs.trace import Compressed, Trace


def schedule(trace: Trace, t0: float) -> tuple[list[float], list[float]]:
    """Place every action on the virtual clock: start when its deps are done and its resource is free.

    Actions are taken in order of the time they become ready (ties by program order), so
    each resource serves its queue first come, first served (see :func:`sweep`).
    """
    n = len(trace)
    codes: dict[str, int] = {}
    res = [codes.setdefault(r, len(codes)) for r in trace.resource]
    succ: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for i, ds in enumerate(trace.deps):
        indeg[i] = len(ds)
        for d in ds:
            succ[d].append(i)
    start, end, ready = [0.0] * n, [0.0] * n, [t0] * n
    heap = [(t0, i) for i in range(n) if not indeg[i]]  # in order: already a heap
    sweep(heap, res, trace.duration, succ, [0] * n, indeg, ready, start, end, [t0] * len(codes))
    return start, end


def sweep(heap: list[tuple[float, int]], res: list[int], dur: list[float], succ: list[list[int]],
          base: list[int], indeg: list[int], ready: list[float], start: list[float] | None, end: list[float],
          free: list[float], fork: int | None = None) -> tuple | None:
    """The clock's loop over actions numbered ``0..n-1``, from ``heap`` (the (ready time, id) of actions
    that can start) until no action is left; fills ``start`` (unless None), ``end`` and ``ready``.

    The action ready first (ties: the lower id, i.e. earlier in the program) is taken next;
    it starts when its resource ``res[i]`` (numbered) is free and holds it for ``dur[i]``.
    The successors of ``i`` are ``base[i] + o`` for ``o`` in ``succ[i]`` (the planner lists a
    repeated block's successors once, as offsets); ``indeg`` counts unfinished dependencies.
    :func:`schedule` (the simulator's clock) and the planner's whole-round clock both run it.

    With ``fork``, returns (heap, ready, end, free, indeg) as they were just before the first
    action with id ``>= fork`` was taken (copies), or None if there is none.
    """
    if not heap:
        return None
    push, pushpop, pop = heapq.heappush, heapq.heappushpop, heapq.heappop
    kept = None
    if fork is None:
        fork = len(res)
    item = pop(heap)
    while True:
        t, i = item
        if i >= fork:
            kept = ([*heap, item], ready[:], end[:], free[:], indeg[:])
            fork = len(res)
        r = res[i]
        f = free[r]
        s = t if t >= f else f
        e = s + dur[i]
        free[r] = e
        if start is not None:
            start[i] = s
        end[i] = e
        after = succ[i]
        if len(after) == 1:  # most actions have one successor: the same as below, shorter
            j = base[i] + after[0]
            k = indeg[j] - 1
            indeg[j] = k
            if not k:  # released: its ready time is the latest end of its dependencies
                rj = ready[j]
                if e > rj:
                    ready[j] = rj = e
                item = pushpop(heap, (rj, j))
                continue
            if e > ready[j]:
                ready[j] = e
            if heap:
                item = pop(heap)
            else:
                break
            continue
        nxt = -1
        b = base[i]
        for o in after:
            j = b + o
            if e > ready[j]:
                ready[j] = e
            k = indeg[j] - 1
            indeg[j] = k
            if not k:
                if nxt >= 0:
                    push(heap, (ready[nxt], nxt))
                nxt = j
        if nxt >= 0:  # the next action is often the one just released: no trip through the heap
            item = pushpop(heap, (ready[nxt], nxt))
        elif heap:
            item = pop(heap)
        else:
            break
    return kept


def schedule_range(trace: Trace, lo: int, hi: int, t0: float, start: list[float], end: list[float],
                   ready: list[float], free: dict[str, float]) -> None:
    """Schedule actions ``lo .. hi-1`` in place, after the actions before ``lo`` (already in ``end``).

    The clock of :func:`schedule`, for a slice of a trace: ``free`` (resource -> time it is
    next free) carries over from the earlier actions and is updated; ``ready`` receives each
    action's ready time. The planner calls it block by block (see ``flexpl.planner``).
    """
    m = hi - lo
    indeg = [0] * m
    succ: list[list[int]] = [[] for _ in range(m)]
    deps = trace.deps
    for i in range(lo, hi):
        r = t0
        for d in deps[i]:
            if d >= lo:
                indeg[i - lo] += 1
                succ[d - lo].append(i)
            elif end[d] > r:
                r = end[d]
        ready[i] = r
    heap = [(ready[i], i) for i in range(lo, hi) if indeg[i - lo] == 0]
    heapq.heapify(heap)
    resource, duration = trace.resource, trace.duration
    while heap:
        t, i = heapq.heappop(heap)
        res = resource[i]
        s = max(t, free.get(res, t0))
        e = s + duration[i]
        start[i], end[i] = s, e
        free[res] = e
        for j in succ[i - lo]:
            if e > ready[j]:
                ready[j] = e
            indeg[j - lo] -= 1
            if indeg[j - lo] == 0:
                heapq.heappush(heap, (ready[j], j))


def slice_trace(t: Trace, lo: int, hi: int) -> Trace:
    """Actions ``lo..hi-1`` of ``t`` as a trace of their own (dependencies as they were)."""
    cls = type(t)
    return cls(**{name: getattr(t, name)[lo:hi] for name in cls.__dataclass_fields__})


class FlatRound:
    """A compressed round unrolled into int-coded arrays, in :func:`expand`'s order, for the whole-round clock.

    The simulator's clock (``schedule`` from time 0): the same loop, :func:`sweep`,
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
        kept = sweep(heap, self.res, self.dur, succ, self.base, indeg, ready, None, end, free, fork)
        if kept is not None:  # the first upload action: keep the state for resume()
            self.fork = kept


def flat_makespans(flat: FlatRound, need: tuple[bool, bool]) -> tuple[float | None, float | None]:
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
