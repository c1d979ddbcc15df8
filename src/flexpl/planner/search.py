"""Search over per-device cuts by structure, exactly (``flexpl plan --search device-cuts``).

An FPL plan with per-device cuts (``plan.device_cuts``, :mod:`flexpl.plan.device_cuts`) gives each of
``N`` devices a cut in ``0..c``: ``(c + 1) ** N`` plans per parent (65,536 for ``fpl-sync cut=3`` on
edge-fmnist). Costing each with the exact walk (:meth:`Planner.predict`) takes tens of milliseconds a
plan; the search costs them by their structure instead, from the same exact walk.

[Note: separable costs] Device ``n``'s front (its FLOPs, energy and busy time, the activation bytes on
its link, its replicas' memory on its own node and on its trunk's host) is fixed by its own cut
``d_n``. What couples devices is the front's cut into pieces: the front becomes one stage per distinct
cut (``flexpl.plan.device_cuts.with_device_cuts``), so FedAvg of the pieces, their aggregation FLOPs and
the number of stages depend on the set ``S`` of distinct cuts below ``c``. So every additive quantity
``q`` of a plan ``d`` (FLOPs, bytes, energy, raw bytes, per node: peak memory, bytes, busy time) is

    q(d) = q(base) + sum_n u_n(d_n) + h(S(d)),     u_n(e) = q(n at e, the others at c) - q(base)

where ``base`` has every device at ``c`` (the parent plan) and ``h(S)`` is what the set of cuts adds
beyond the single deviations: ``h(S) = q(r_S) - q(base) - sum_n u_n(r_S,n)`` for one plan ``r_S`` with
exactly the cuts ``S`` (``h`` is 0 for ``|S| <= 1``). All of ``u`` and ``h`` are read from exact walks
(``1 + N c + 2^c - c - 1`` of them), never from a separate cost model; :func:`brute_force` and the
tests check ``q(d)`` against the exact walk of every plan of a small space.

The minimum is then exact: for each ``S`` the devices choose among ``S`` and ``c`` (every cut of ``S``
used by some device), and a depth-first branch and bound over the devices (best options first) prunes
a branch only when its lower bound (cost so far + each remaining device's cheapest option) cannot beat
the best plan found or a constraint's lower bound already exceeds its limit: never a feasible better
plan. Constraints on additive columns are linear in ``q``; maxima (``peak_memory_bytes_max``,
``max_device_bytes_per_round``, ``device_memory_fits``) are one linear constraint per node.

Simulated time is not separable (devices queue at a shared trunk host); the ``time`` objective is
searched best-first by a lower bound that is: every node and link does one thing at a time, so a
plan's simulated time is at least its busiest resource's busy seconds, which are separable. Plans are
walked exactly in increasing bound until the best walked time is at most the next bound (proven
optimal), or ``max_walks`` is spent (then the result says ``proven = False``).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flexpl.errors import UserError
from flexpl.planner.candidates import Candidate
from flexpl.planner.choose import MEMORY_FITS, OBJECTIVES, Constraint
from flexpl.planner.curves import CUMULATIVE

if TYPE_CHECKING:
    from flexpl.planner.predict import Planner, Prediction

# the columns the search can cost by structure (objectives and constraints)
SEARCH_OBJECTIVES = ("energy", "device_energy", "bytes", "time",
                     "energy_to_target", "device_energy_to_target", "bytes_to_target", "time_to_target")
_ADDITIVE_COLUMNS = {  # column -> (total key, divide by rounds)
    "flops_total": "flops", "bytes_total": "bytes", "energy_j_total": "energy", "device_energy_j_total": "dev_energy",
    "flops_per_round": "flops", "bytes_per_round": "bytes", "energy_j_per_round": "energy",
    "device_energy_j_per_round": "dev_energy", "raw_bytes_per_round": "raw", "params_total": "params",
    "stages": "stages", "energy_j_compute_per_round": "energy_compute", "energy_j_comm_per_round": "energy_comm",
}
_PER_ROUND = frozenset(k for k in _ADDITIVE_COLUMNS if k.endswith("_per_round"))
_ENERGY = frozenset({"energy", "dev_energy", "energy_compute", "energy_comm"})
# with a round R to the target (:func:`cut_structure`'s ``to_round``): the exact bill through round R
_TO_ROUND = {"flops@R": "flops_per_round", "bytes@R": "bytes_per_round", "energy@R": "energy_j_per_round",
             "dev_energy@R": "device_energy_j_per_round"}
SEARCH_COLUMNS = (*_ADDITIVE_COLUMNS, "raw_data_moved", "device_memory_fits", "peak_memory_bytes_max",
                  "peak_memory_device_max", "max_device_bytes_per_round")


@dataclass
class SearchResult:
    """The best per-device cuts of one parent plan under an objective and constraints.

    ``cuts``: data node -> cut (the parent's cut for nodes that keep it), None when no plan of the space
    is feasible; ``value``: the objective's column of the exact walk of that plan (``row``); ``space``:
    plans in the space; ``walks``: exact walks spent; ``proven``: the minimum is proven (always, but for
    ``time`` when ``max_walks`` ran out).
    """

    parent: Candidate
    cuts: dict[str, int] | None
    candidate: Candidate | None
    row: dict[str, Any] | None
    value: float
    space: int
    walks: int
    seconds: float
    proven: bool = True


@dataclass
class CutStructure:
    """The separable costs of a parent plan's per-device-cut space (see [Note: separable costs])."""

    parent: Candidate
    cut: int
    devices: list[str]
    options: list[int]
    keys: list[str]
    rounds: int
    base: list[float]
    # per set S of cuts below c: q(d) = level[S] + sum_n delta[S][n, d_n] (delta is 0 at c)
    level: dict[frozenset[int], list[float]]
    delta: dict[frozenset[int], dict[tuple[str, int], list[float]]]
    memory: dict[str, float]
    # plans whose devices all take different cuts below c (no device is free to vary): walked one by one
    explicit: dict[tuple[int, ...], list[float]]
    walks: int = 0  # exact walks the structure took
    seconds: float = 0.0
    devices_all: list[str] = field(default_factory=list)  # every data node (the searched ones or not)
    to_round: int | None = None  # the round the "@R" keys accumulate the bill through (None: no such keys)

    @property
    def space(self) -> int:
        """Plans in the space: ``len(options) ** len(devices)``."""
        return len(self.options) ** len(self.devices)

    def vector(self, cuts: dict[str, int]) -> list[float]:
        """The additive quantities of the plan with ``cuts`` (device -> cut), by structure."""
        c = self.cut
        combo = tuple(cuts.get(n, c) for n in self.devices)
        if combo in self.explicit:
            return list(self.explicit[combo])
        used = frozenset(e for e in combo if e != c)
        q = list(self.level[used])
        delta = self.delta[used]
        for n in self.devices:
            e = cuts.get(n, c)
            if e != c:
                for i, v in enumerate(delta[n, e]):
                    q[i] += v
        return q

    def column(self, q: Sequence[float], col: str) -> Any:
        """Column ``col`` of a plan's row from its additive quantities ``q`` (``SEARCH_COLUMNS``)."""
        ix = {k: i for i, k in enumerate(self.keys)}
        if col in _ADDITIVE_COLUMNS:
            v = q[ix[_ADDITIVE_COLUMNS[col]]]
            if col in _PER_ROUND:
                return v / self.rounds if _float_key(_ADDITIVE_COLUMNS[col]) else _per(round(v), self.rounds)
            return v if _float_key(_ADDITIVE_COLUMNS[col]) else round(v)
        if col == "raw_data_moved":
            return q[ix["raw"]] > 0
        if col == "device_memory_fits":
            return all(q[ix[f"peak:{n}"]] <= m for n, m in self.memory.items())
        if col == "peak_memory_bytes_max":
            return round(max(q[ix[f"peak:{n}"]] for n in self.memory))
        if col == "peak_memory_device_max":
            return round(max(q[ix[f"peak:{n}"]] for n in self.devices_all))
        if col == "max_device_bytes_per_round":
            return _per(round(max(q[ix[f"bytes:{n}"]] for n in self.devices_all)), self.rounds)
        raise KeyError(col)


def _float_key(key: str) -> bool:
    return key in _ENERGY or key in ("energy@R", "dev_energy@R")


def _per(total: int, rounds: int) -> int | float:
    return total // rounds if total % rounds == 0 else total / rounds


def searchable(cand: Candidate) -> bool:
    """Whether ``cand`` is a parent the search can give per-device cuts: an FPL preset (``fpl``, ``fpl-sync``,
    ``fpl-group``) at a cut of at least 1, written as a preset (not explicit ``plan.stages``)."""
    plan = cand.plan or {}
    return (cand.strategy in ("fpl", "fpl-sync", "fpl-group") and not plan.get("stages")
            and isinstance(plan.get("cut"), int) and plan["cut"] >= 1 and "device_cuts" not in plan)


def with_cuts(parent: Candidate, cuts: dict[str, int]) -> Candidate:
    """``parent`` with ``plan.device_cuts`` (only the devices whose cut differs from the parent's)."""
    c = int((parent.plan or {})["cut"])
    own = {n: int(e) for n, e in cuts.items() if e != c}
    if not own:
        return parent
    text = ",".join(f"{n}:{e}" for n, e in sorted(own.items()))
    return Candidate(f"{parent.label} devcuts={text}", parent.strategy, {**(parent.plan or {}), "device_cuts": own},
                     parent.family + "-search", parent.cut, parent.grouping, parent.sync_every)


def _quantities(pred: Prediction, planner: Planner, include_idle: bool, to_round: int | None = None
                ) -> dict[str, float]:
    row = pred.row
    out: dict[str, float] = {
        "flops": row["flops_total"], "bytes": row["bytes_total"], "energy": row["energy_j_total"],
        "dev_energy": row["device_energy_j_total"], "raw": pred.raw_bytes, "params": row["params_total"],
        "stages": row["stages"],
        "energy_compute": sum(d["energy_j_compute"] for d in pred.per_node.values()),
        "energy_comm": sum(d["energy_j_comm"] for d in pred.per_node.values()),
    }
    for n, d in pred.per_node.items():
        out[f"peak:{n}"] = pred.peak_memory[n]
        out[f"bytes:{n}"] = d["bytes_sent"] + d["bytes_received"]
        out[f"busy:{n}"] = d["busy_s"]
    for name, d in pred.per_link.items():
        out[f"busy:{name}"] = d["busy_s"]
    if to_round is not None:  # the exact cumulative bill through round R (additive like the run's totals)
        bill = row[CUMULATIVE]
        for k, per_round in _TO_ROUND.items():
            out[k] = bill.at(per_round, to_round)
    if include_idle:  # idle energy follows the simulated time, which is not separable
        for k in (*_ENERGY, "energy@R", "dev_energy@R"):
            out.pop(k, None)
    return out


def cut_structure(planner: Planner, parent: Candidate, devices: Sequence[str] | None = None,
                  options: Sequence[int] | None = None, to_round: int | None = None) -> CutStructure:
    """Walk the plans that determine ``parent``'s per-device-cut space exactly (see [Note: separable costs]).

    ``devices``: the data nodes whose cut is searched (default all; the others keep the parent's cut);
    ``options``: the cuts they may take (default ``0..c``, the model's allowed cuts only); ``to_round``:
    also structure the exact bill through that round (FLOPs, bytes, energy, device energy: the keys
    ``flops@R``, ...), which the to-target objectives minimise.
    """
    if not searchable(parent):
        raise UserError(f"--search device-cuts: '{parent.label}' is not an FPL preset with a cut of at least 1")
    t0 = time.perf_counter()
    c = int((parent.plan or {})["cut"])
    topo = planner.topo
    devs = list(devices) if devices is not None else list(topo.data_nodes)
    allowed = planner.front.allowed
    opts = sorted(set(options) if options is not None else
                  {e for e in range(c + 1) if allowed is None or e in allowed or e == c} | {c})
    if any(not 0 <= e <= c for e in opts):
        raise UserError(f"--search device-cuts: cuts {opts} out of range 0..{c}")
    if to_round is not None and not 1 <= to_round <= planner.scn.training.rounds:
        raise ValueError(f"cut_structure: to_round {to_round} is not a round of the run (1..{planner.scn.training.rounds})")
    idle = bool(planner.scn.energy.include_idle)
    seen: dict[tuple[int, ...], dict[str, float]] = {}

    def walk(cuts: dict[str, int]) -> dict[str, float]:
        key = tuple(cuts.get(n, c) for n in devs)
        if key not in seen:
            seen[key] = _quantities(planner.predict(with_cuts(parent, cuts)), planner, idle, to_round)
        return seen[key]

    def vec(cuts: dict[str, int]) -> list[float]:
        q = walk(cuts)
        return [q[k] for k in keys]

    b = walk({})
    keys = list(b)
    base = [b[k] for k in keys]
    level: dict[frozenset[int], list[float]] = {frozenset(): base}
    delta: dict[frozenset[int], dict[tuple[str, int], list[float]]] = {frozenset(): {}}
    low = [e for e in opts if e != c]
    for size in range(1, min(len(low), len(devs) - 1) + 1):
        for s in itertools.combinations(low, size):
            d_s: dict[tuple[str, int], list[float]] = {}
            for n in devs:  # n varies over s and c while the others hold every cut of s
                rest = dict(zip([m for m in devs if m != n], s))
                at_c = vec(rest)
                for e in s:
                    d_s[n, e] = [x - y for x, y in zip(vec({**rest, n: e}), at_c)]
            rep = dict(zip(devs, s))
            level[frozenset(s)] = [x - sum(d_s[n, e][i] for n, e in rep.items()) for i, x in enumerate(vec(rep))]
            delta[frozenset(s)] = d_s
    explicit = {}
    if len(low) >= len(devs):
        for combo in itertools.permutations(low, len(devs)):
            explicit[combo] = vec(dict(zip(devs, combo)))
    memory = {n: float(topo.nodes[n].memory_bytes) for n in topo.nodes}
    st = CutStructure(parent, c, devs, opts, keys, planner.scn.training.rounds, base, level, delta, memory, explicit,
                      len(seen), time.perf_counter() - t0, devices_all=list(planner.scn.data_nodes),
                      to_round=to_round)
    return st


# ---------------------------------------------------------------- constraints as linear bounds

@dataclass(frozen=True)
class _Linear:
    """``sum_i coef_i * q[key_i] <= bound`` (``strict``: ``<``)."""

    coef: tuple[tuple[int, float], ...]
    bound: float
    strict: bool = False

    def value(self, q: Sequence[float]) -> float:
        return sum(a * q[i] for i, a in self.coef)

    def holds(self, q: Sequence[float]) -> bool:
        v = self.value(q)
        return v < self.bound if self.strict else v <= self.bound


def _linear(st: CutStructure, con: Constraint) -> list[_Linear]:
    """Constraint ``con`` as linear bounds on the additive quantities (a UserError when it is not separable)."""
    ix = {k: i for i, k in enumerate(st.keys)}
    col, op, val = con.column, con.op, con.value
    if col == "device_memory_fits" or col == "raw_data_moved":
        want = bool(val)
        if col == "device_memory_fits":
            if not want:
                raise UserError(f"--search device-cuts: '{con.text}' is not separable; the search supports "
                                "device_memory_fits (true)")
            return [_Linear(((ix[f"peak:{n}"], 1.0),), m) for n, m in st.memory.items()]
        return [_Linear(((ix["raw"], 1.0),), 0.0)] if not want else [_Linear(((ix["raw"], -1.0),), 0.0, True)]
    per_node = {"peak_memory_bytes_max": ("peak", list(st.memory), 1),
                "peak_memory_device_max": ("peak", st.devices_all, 1),
                "max_device_bytes_per_round": ("bytes", st.devices_all, st.rounds)}
    if col in per_node and op in ("<=", "<"):
        kind, nodes, scale = per_node[col]
        return [_Linear(((ix[f"{kind}:{n}"], 1.0 / scale),), float(val), op == "<") for n in nodes]
    key = _ADDITIVE_COLUMNS.get(col)
    if key is None or col == "stages" or op == "==":
        raise UserError(_not_separable(con))
    if key not in ix:
        raise UserError(f"--search device-cuts: energy.include_idle makes energy follow the simulated time, "
                        f"which is not separable; constraint '{con.text}' cannot be searched")
    scale = st.rounds if col in _PER_ROUND else 1
    sign = 1.0 if op in ("<=", "<") else -1.0
    return [_Linear(((ix[key], sign / scale),), sign * float(val), op in ("<", ">"))]


def check_search(objective: str, constraints: Sequence[Constraint]) -> None:
    """Raise the one-line UserError the search would raise for ``objective`` or a constraint, before any work."""
    if objective not in SEARCH_OBJECTIVES:
        raise UserError(f"--search device-cuts: objective '{objective}' is not searched; "
                        f"allowed: {', '.join(SEARCH_OBJECTIVES)}")
    for con in constraints:
        ok = (con.column in ("raw_data_moved", "reaches")
              or (con.column == "device_memory_fits" and con.value is True)
              or (con.column in _MAX_COLUMNS and con.op in ("<=", "<"))
              or (con.column in _ADDITIVE_COLUMNS and con.column != "stages" and con.op != "=="))
        if not ok:
            raise UserError(_not_separable(con))


_MAX_COLUMNS = ("peak_memory_bytes_max", "peak_memory_device_max", "max_device_bytes_per_round")


def _not_separable(con: Constraint) -> str:
    return (f"--search device-cuts: constraint '{con.text}' is not separable over devices; "
            f"the search takes <=, <, >=, > on {', '.join(k for k in _ADDITIVE_COLUMNS if k != 'stages')}, "
            f"<= on {', '.join(_MAX_COLUMNS)}, device_memory_fits and raw_data_moved")


def _objective_key(st: CutStructure, objective: str) -> str:
    if objective not in SEARCH_OBJECTIVES:
        raise UserError(f"--search device-cuts: objective '{objective}' is not searched; "
                        f"allowed: {', '.join(SEARCH_OBJECTIVES)}")
    key = {"energy": "energy", "device_energy": "dev_energy", "bytes": "bytes",
           "time": "time"}[objective.removesuffix("_to_target")]
    if key != "time" and objective.endswith("_to_target") and st.to_round is not None:
        key += "@R"  # the exact bill through the round the plans reach the target
    if key != "time" and key not in st.keys:
        raise UserError(f"--search device-cuts: energy.include_idle makes energy follow the simulated time, "
                        f"which is not separable; objective '{objective}' cannot be searched")
    return key


# ---------------------------------------------------------------- the search

def _lin(vec: Sequence[float], coef: Sequence[tuple[int, float]]) -> float:
    return sum(a * vec[i] for i, a in coef)


def _min_separable(st: CutStructure, weights: list[tuple[int, float]], lins: list[_Linear]
                   ) -> tuple[float, dict[str, int] | None]:
    """Exact minimum of ``sum w_i q_i`` over the space subject to ``lins`` (branch and bound per set of cuts)."""
    best_val, best = math.inf, None
    for combo, q in st.explicit.items():  # every device at its own cut below c
        v = _lin(q, weights)
        if v < best_val and all(x.holds(q) for x in lins):
            best_val, best = v, dict(zip(st.devices, combo))
    for s_set in st.level:
        br = _Branch(st, s_set, weights, lins, best_val, best)
        br.run()
        best_val, best = br.best_val, br.best
    return best_val, best


class _Branch:
    """Depth-first branch and bound over the devices for one set ``S`` of cuts below c (each used, the
    rest at c): a branch is cut only when its lower bound (so far + each remaining device's cheapest
    option) cannot beat the best plan found, or a constraint's lower bound exceeds its limit."""

    def __init__(self, st: CutStructure, s_set: frozenset[int], weights: list[tuple[int, float]],
                 lins: list[_Linear], best_val: float, best: dict[str, int] | None) -> None:
        self.st, self.lins, self.weights = st, lins, weights
        self.best_val, self.best = best_val, best
        self.level = st.level[s_set]
        self.need = s_set
        c, devs = st.cut, st.devices
        choices = [c, *sorted(s_set)]
        d_s = st.delta[s_set]
        zero = (0.0, [0.0] * len(lins))
        # per device, per option: (objective term, constraint terms), cheapest first
        self.opts = [sorted(((e, (_lin(d_s[n, e], weights), [_lin(d_s[n, e], x.coef) for x in lins])
                              if e != c else zero) for e in choices), key=lambda t: t[1][0]) for n in devs]
        k = len(devs)
        self.rest_obj = [0.0] * (k + 1)
        self.rest_con = [[0.0] * (k + 1) for _ in lins]
        for i in range(k - 1, -1, -1):
            self.rest_obj[i] = self.rest_obj[i + 1] + min(t[0] for _, t in self.opts[i])
            for j in range(len(lins)):
                self.rest_con[j][i] = self.rest_con[j][i + 1] + min(t[1][j] for _, t in self.opts[i])
        self.pick = [c] * k

    def run(self) -> None:
        """Search the set's plans; ``best_val``/``best`` hold the best so far (this set's or earlier)."""
        self._dfs(0, _lin(self.level, self.weights), [x.value(self.level) for x in self.lins], frozenset())

    def _dfs(self, i: int, val: float, cons: list[float], covered: frozenset[int]) -> None:
        st, lins, k = self.st, self.lins, len(self.st.devices)
        if len(self.need - covered) > k - i or val + self.rest_obj[i] >= self.best_val + _slack(self.best_val):
            return
        if any(cons[j] + self.rest_con[j][i] > x.bound + _slack(x.bound) for j, x in enumerate(lins)):
            return
        if i == k:
            cuts = dict(zip(st.devices, self.pick))
            q = st.vector(cuts)
            v = _lin(q, self.weights)
            if v < self.best_val and all(x.holds(q) for x in lins):
                self.best_val, self.best = v, cuts
            return
        for e, (o, cc) in self.opts[i]:
            self.pick[i] = e
            self._dfs(i + 1, val + o, [a + b for a, b in zip(cons, cc)], covered | {e} if e != st.cut else covered)
        self.pick[i] = st.cut


def _slack(bound: float) -> float:
    """Rounding room for a bound on sums of floats (pruning only; the leaf checks the bound itself)."""
    return 1e-9 * max(abs(bound), 1.0)


def best_device_cuts(planner: Planner, parent: Candidate, objective: str, constraints: Sequence[Constraint] = (),
                     devices: Sequence[str] | None = None, options: Sequence[int] | None = None,
                     max_walks: int = 200, structure: CutStructure | None = None, to_round: int | None = None
                     ) -> SearchResult:
    """The per-device cuts of ``parent`` that minimise ``objective`` under ``constraints`` (and memory), exactly.

    ``objective``: a key of ``OBJECTIVES`` in ``SEARCH_OBJECTIVES``. A to-target form with ``to_round`` R
    (the round the parent's learning class reaches the target: every per-device cut of a plan is in
    its class, so every plan of the space reaches it in that round) minimises the exact bill through
    round R, which FedAvg every k rounds, round 1's download and the clients each round selects can
    order differently from the whole run's; without ``to_round`` it ranks by the whole run's bill.
    ``structure`` (reused) must have been built with the same ``to_round``. The returned ``row`` is
    the exact walk of the chosen plan and ``value`` its objective (through round R for a to-target form
    with ``to_round``, else per round). See [Note: separable costs] for why the minimum is exact.
    """
    t0 = time.perf_counter()
    st = structure or cut_structure(planner, parent, devices, options, to_round)
    if st.to_round != to_round:
        raise ValueError(f"best_device_cuts: the structure accumulates to round {st.to_round}, asked {to_round}")
    key = _objective_key(st, objective)
    # "reaches" (a target) is the parent's learning class's: the same for every plan of the space
    lins = [x for con in (MEMORY_FITS, *constraints) if con.column != "reaches" for x in _linear(st, con)]
    ix = {k: i for i, k in enumerate(st.keys)}
    walks = st.walks
    proven = True
    if key != "time":
        _, cuts = _min_separable(st, [(ix[key], 1.0)], lins)
    else:
        cuts, n, proven = _min_time(planner, st, lins, max_walks)
        walks += n
    row = cand = None
    value = math.inf
    if cuts is not None:
        cand = with_cuts(parent, cuts)
        row = dict(planner.predict(cand).row)
        walks += 1
        value = _value(row, objective, to_round)
    full = {n: (cuts or {}).get(n, st.cut) for n in planner.scn.data_nodes} if cuts is not None else None
    return SearchResult(parent, full, cand, row, value, st.space, walks,
                        st.seconds + time.perf_counter() - t0, proven)


def _value(row: dict[str, Any], objective: str, to_round: int | None) -> float:
    """``objective``'s value on a walked ``row``: through round ``to_round`` for a to-target form given it, else per round."""
    per_round = OBJECTIVES[objective.removesuffix("_to_target") if objective.endswith("_to_target") else objective]
    if objective.endswith("_to_target") and to_round is not None:
        return float(row[CUMULATIVE].at(per_round, to_round))
    return float(row[per_round])


def _time_bound(st: CutStructure, q: Sequence[float]) -> float:
    """A lower bound on the simulated time: the busiest node's or link's busy seconds (one thing at a time)."""
    return max(q[i] for i, k in enumerate(st.keys) if k.startswith("busy:") and k[5:] in st.memory)


def _min_time(planner: Planner, st: CutStructure, lins: list[_Linear], max_walks: int
              ) -> tuple[dict[str, int] | None, int, bool]:
    """Best-first by :func:`_time_bound` over the feasible plans; walk exactly until the bound proves the best."""
    if st.space > 2_000_000:
        raise UserError(f"--search device-cuts: objective time orders all {st.space:,} plans by a bound; "
                        "at most 2,000,000 (search fewer devices or cuts, or another objective)")
    heap: list[tuple[float, int, dict[str, int]]] = []
    for k, combo in enumerate(itertools.product(st.options, repeat=len(st.devices))):
        cuts = dict(zip(st.devices, combo))
        q = st.vector(cuts)
        if all(x.holds(q) for x in lins):
            heap.append((_time_bound(st, q), k, cuts))
    heapq.heapify(heap)
    best_t, best, walks = math.inf, None, 0
    while heap:
        lb, _, cuts = heapq.heappop(heap)
        if lb >= best_t:
            return best, walks, True
        if walks >= max_walks:
            return best, walks, False
        t = planner.predict(with_cuts(st.parent, cuts)).row["sim_time_s"]
        walks += 1
        if t < best_t:
            best_t, best = t, cuts
    return best, walks, True


def brute_force(planner: Planner, parent: Candidate, objective: str, constraints: Sequence[Constraint] = (),
                devices: Sequence[str] | None = None, options: Sequence[int] | None = None,
                to_round: int | None = None) -> tuple[dict[str, int] | None, float, list[dict[str, Any]]]:
    """Every plan of the space walked exactly (:meth:`Planner.predict`); returns the best cuts, its value, all rows.

    The check of :func:`best_device_cuts` (``to_round`` as there): slow (one walk per plan), for small spaces.
    """
    from flexpl.planner.choose import MEMORY_FITS as fits

    c = int((parent.plan or {})["cut"])
    devs = list(devices) if devices is not None else list(planner.topo.data_nodes)
    opts = sorted(set(options)) if options is not None else list(range(c + 1))
    rows, best, best_val = [], None, math.inf
    for combo in itertools.product(opts, repeat=len(devs)):
        cuts = dict(zip(devs, combo))
        row = dict(planner.predict(with_cuts(parent, cuts)).row)
        row["_cuts"] = cuts
        rows.append(row)
        val = _value(row, objective, to_round)
        if all(x.holds(row) for x in (fits, *constraints)) and val < best_val:
            best_val, best = val, cuts
    return best, best_val, rows
