"""The planner's block clock: a compressed round scheduled block by block, jumping over periodic copies.

See [Note: compressed rounds] in ``flexpl/planner/__init__.py``. Where the block clock
cannot be exact it gives up (returns None) and the whole-round clock
(:class:`flexpl.costs.clock.schedule.FlatRound`, the simulator's own loop) schedules the round.
"""

from __future__ import annotations

import math
import operator

from flexpl.costs.clock.schedule import FlatRound, flat_makespans, schedule_range
from flexpl.costs.trace import COMPUTE, Compressed, Trace


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


class BlockClock:
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
        self.ct = ct
        self.columns = columns  # the unrolled trace's columns that are filled in (expand() wants all)
        # give up once this many actions are unrolled: the whole-round clock (FlatRound) is
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
    clk = BlockClock(ct, columns=BlockClock.ALL_COLUMNS)
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


def makespans(ct: Compressed) -> tuple[float, float, bool]:
    """Makespan of the round without and with its upload, and whether the fast clock was exact alone."""
    got = BlockClock(ct).run()
    if got is not None:
        return got[0], got[1], True
    t_prefix, t_full = flat_makespans(FlatRound(ct), (True, True))
    assert t_prefix is not None and t_full is not None
    return t_prefix, t_full, False
