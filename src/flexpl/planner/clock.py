"""The planner's clocks: block by block with jumps over periodic copies, or the whole round at once."""

from __future__ import annotations

import heapq
import math
import operator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy imports stay out of ``flexpl --help``
    from flexpl.costs.trace import Trace
from flexpl.planner.walk import Compressed


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
