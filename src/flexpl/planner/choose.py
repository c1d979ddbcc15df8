"""Predicted columns, constraints and the choice of a plan (feasible, Pareto front, recommended)."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flexpl.errors import UserError

if TYPE_CHECKING:  # heavy imports stay out of ``flexpl --help``
    pass


OBJECTIVES = {"energy": "energy_j_per_round", "time": "sim_time_s_per_round", "bytes": "bytes_per_round",
              "device_energy": "device_energy_j_per_round",
              # to a target accuracy (flexpl plan --target-accuracy A): the exact bill through the predicted round
              "device_energy_to_target": "device_energy_j_to_target", "bytes_to_target": "bytes_to_target",
              "time_to_target": "sim_time_s_to_target", "energy_to_target": "energy_j_to_target"}
TARGET_OBJECTIVES = frozenset(k for k in OBJECTIVES if k.endswith("_to_target"))
# predicted columns a --constraint may name (booleans accept a bare name or ==true/false)
NUMERIC_COLUMNS = (
    "flops_per_round", "bytes_per_round", "sim_time_s_per_round", "energy_j_per_round",
    "device_energy_j_per_round", "energy_j_compute_per_round", "energy_j_comm_per_round",
    "max_device_bytes_per_round", "peak_memory_bytes_max", "peak_memory_device_max", "params_total",
    "max_params_total", "flops_total", "bytes_total", "sim_time_s", "energy_j_total", "device_energy_j_total",
    "raw_bytes_per_round", "stages", "sync_every")
BOOL_COLUMNS = ("device_memory_fits", "raw_data_moved", "reaches")
ID_COLUMNS = ("plan", "strategy", "family", "cut", "grouping", "sync_every", "stages", "learning_class")
CSV_COLUMNS = (*ID_COLUMNS, "flops_per_round", "bytes_per_round", "sim_time_s_per_round", "energy_j_per_round",
               "device_energy_j_per_round", "energy_j_compute_per_round", "energy_j_comm_per_round",
               "max_device_bytes_per_round", "raw_bytes_per_round", "raw_data_moved", "peak_memory_bytes_max",
               "peak_memory_device_max", "device_memory_fits", "params_total", "max_params_total", "rounds",
               "flops_total", "bytes_total", "sim_time_s", "energy_j_total", "device_energy_j_total", "feasible", "pareto", "recommended",
               "accuracy", "validated_rounds", "predict_ms")





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
REACHES = Constraint("reaches", "reaches", "==", True)  # a to-target objective: the plan reaches the target


def pick(rows: Sequence[dict[str, Any]], constraints: Sequence[Constraint], objective: str,
         suffix: str = "") -> dict[str, Any] | None:
    """The plan a to-target ``objective`` picks for the target whose columns end in ``suffix`` (no row changed).

    Feasible: fits in memory, meets ``constraints`` and reaches that target; None when no plan is.
    """
    col = OBJECTIVES[objective] + suffix
    ok = [r for r in rows if all(c.holds(r) for c in (MEMORY_FITS, *constraints)) and r.get(f"reaches{suffix}")]
    return min(ok, key=lambda r: (r[col], r["bytes_per_round"], r["sim_time_s_per_round"])) if ok else None


def choose(rows: list[dict[str, Any]], constraints: Sequence[Constraint], objective: str) -> dict[str, Any]:
    """Mark ``feasible``, ``pareto`` and ``recommended`` on every row; return the recommended row.

    Feasible: fits in every node's memory and meets every constraint. Pareto: no feasible
    plan is at least as good in the objective, bytes and time and better in one.
    Recommended: the feasible plan with the lowest objective (ties: fewer bytes, less time).
    Raises a one-line UserError naming the closest miss when nothing is feasible.
    """
    col = OBJECTIVES[objective]
    every = [MEMORY_FITS, *constraints]
    if objective in TARGET_OBJECTIVES:
        if not rows or col not in rows[0]:
            raise UserError(f"--objective {objective}: costs to a target need --target-accuracy A (e.g. 0.7)")
        every.append(REACHES)
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
