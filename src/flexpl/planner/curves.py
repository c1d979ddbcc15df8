"""Learning curves: fit a class's pilot accuracies and predict the round at which it reaches a target.

A pilot gives accuracies ``y[0..n-1]`` after rounds ``1..n``. With four points or more the fit is
the saturating curve ``a - b * exp(-c * r)`` (least squares in ``a, b`` for each ``c`` on a grid,
``a`` at most 1); with two or three points, ``a + b * ln r``. The predicted round is the first round
``r <= max_rounds`` whose fitted accuracy reaches the target, or the first pilot round that
measured it. The interval is the 10th to 90th percentile of the same prediction refitted on
200 parametric bootstrap replicates (the fit plus Gaussian noise of the residuals' standard
deviation, ``sqrt(SSE / (n - p))`` with ``p`` the fit's parameters, at least 0.01, or 0.05 from fewer
than four rounds; a fixed seed), so it widens when the pilot is short or noisy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flexpl.errors import UserError

NOISE_FLOOR = 0.01  # accuracy: the least noise assumed (four pilot rounds or more)
SHORT_NOISE_FLOOR = 0.05  # ... and with two or three, where the log curve fits them (nearly) exactly
_C_GRID = np.logspace(-3, 1, 80)


@dataclass(frozen=True)
class Reach:
    """When a class reaches a target: the predicted round and its interval (None: not within ``max_rounds``)."""

    target: float
    round: int | None
    lo: int | None
    hi: int | None
    max_rounds: int

    @property
    def reaches(self) -> bool:
        """Whether the predicted round is within the scenario's rounds."""
        return self.round is not None


def check_target(a: float) -> float:
    """A target accuracy in (0, 1], or a one-line UserError."""
    if not (isinstance(a, (int, float)) and math.isfinite(a) and 0.0 < a <= 1.0):
        raise UserError(f"--target-accuracy: must be a fraction in (0, 1], e.g. 0.7; got {a}")
    return float(a)


def fit_curve(acc: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    """The fitted accuracy as a function of the round (see the module); needs at least two points."""
    y = np.asarray(acc, dtype=float)
    if len(y) < 2:
        raise ValueError("fit_curve needs the accuracies of at least two rounds")
    r = np.arange(1, len(y) + 1, dtype=float)
    if len(y) < 4:
        b, a = np.polyfit(np.log(r), y, 1)
        return lambda x: np.minimum(a + b * np.log(np.asarray(x, dtype=float)), 1.0)
    e = np.exp(-_C_GRID[:, None] * r[None, :])  # one row per c on the grid
    de = e - e.mean(axis=1, keepdims=True)
    slope = (de @ (y - y.mean())) / np.maximum((de * de).sum(axis=1), 1e-300)  # y = a + slope * e
    a = y.mean() - slope * e.mean(axis=1)
    b = -slope
    over = a > 1.0  # accuracy saturates at most at 1: refit b with a = 1
    a = np.where(over, 1.0, a)
    b = np.where(over, ((1.0 - y)[None, :] * e).sum(axis=1) / np.maximum((e * e).sum(axis=1), 1e-300), b)
    sse = ((a[:, None] - b[:, None] * e - y[None, :]) ** 2).sum(axis=1)
    i = int(np.argmin(sse))
    a, b, c = float(a[i]), float(b[i]), float(_C_GRID[i])
    return lambda x: a - b * np.exp(-c * np.asarray(x, dtype=float))


def residual_sd(acc: Sequence[float], f: Callable[[np.ndarray], np.ndarray] | None = None) -> float:
    """The pilot's noise around its fit ``f`` (default :func:`fit_curve`): ``sqrt(SSE / (n - p))``, with ``p`` the
    fit's parameters (3 for the saturating curve, 2 for the log curve), the unbiased estimate; 0 when the fit
    has no residual degree of freedom (two points). Dividing by ``n`` instead would call a 4-round pilot that
    the 3-parameter curve nearly interpolates almost noiseless, and its interval far too narrow."""
    y = np.asarray(acc, dtype=float)
    f = f or fit_curve(y)
    dof = len(y) - (3 if len(y) >= 4 else 2)
    if dof <= 0:
        return 0.0
    sse = float(np.sum((f(np.arange(1, len(y) + 1)) - y) ** 2))
    return math.sqrt(sse / dof)


def _first_round(f: Callable[[np.ndarray], np.ndarray], target: float, max_rounds: int) -> int | None:
    hit = np.nonzero(f(np.arange(1, max_rounds + 1)) >= target)[0]
    return int(hit[0]) + 1 if len(hit) else None


def predict_reach(acc: Sequence[float], target: float, max_rounds: int, seed: int = 0, boot: int = 200) -> Reach:
    """Predicted round (with a 10-90 % interval) at which a class with pilot accuracies ``acc`` reaches ``target``."""
    y = np.asarray(acc, dtype=float)
    f = fit_curve(y)
    measured = next((i + 1 for i, v in enumerate(y) if v >= target), None)
    point = measured or _first_round(f, target, max_rounds)
    r = np.arange(1, len(y) + 1)
    sd = max(residual_sd(y, f), NOISE_FLOOR if len(y) >= 4 else SHORT_NOISE_FLOOR)
    rng = np.random.default_rng(seed)
    sims = []
    for _ in range(boot):
        ys = f(r) + rng.normal(0.0, sd, len(y))
        got = _first_round(fit_curve(ys), target, max_rounds)
        sims.append(max_rounds + 1 if got is None else got)  # past the last round: does not reach
    lo_q = int(np.percentile(sims, 10, method="lower"))
    hi_q = int(np.percentile(sims, 90, method="higher"))
    lo = None if lo_q > max_rounds else lo_q
    hi = None if hi_q > max_rounds else hi_q
    if point is not None:
        lo = point if lo is None else min(lo, point)
        hi = max(hi, point) if hi is not None else None
        if measured is not None:
            hi = measured if hi is None else min(hi, measured)
            lo = min(lo, measured)
    return Reach(target, point, lo, hi, max_rounds)


# per-round columns of plans.csv and the to-target column each one gives
TO_TARGET = {"bytes_per_round": "bytes_to_target", "energy_j_per_round": "energy_j_to_target",
             "device_energy_j_per_round": "device_energy_j_to_target", "sim_time_s_per_round": "sim_time_s_to_target",
             "flops_per_round": "flops_to_target"}
# the row key of a plan's cumulative bill (:class:`CumulativeBill`; not a column of plans.csv)
CUMULATIVE = "cumulative_bill"


@dataclass(frozen=True)
class CumulativeBill:
    """A plan's exact bill after each round: entry ``r - 1`` is what rounds ``1..r`` cost together.

    The planner's walk fills it round by round (``Planner.predict``: each round's own kind: with or
    without its FedAvg upload, the first round's download or collect, the clients it selects), on the
    terms of the simulator's ``rounds.csv`` (``flops``, ``bytes``, ``sim_time_s``, ``energy_j``;
    ``device_energy_j``: the data-holding nodes' energy, with their idle energy when the scenario
    includes idle). Evaluation is not predicted.
    """

    flops: tuple[int, ...]
    bytes: tuple[int, ...]
    sim_time_s: tuple[float, ...]
    energy_j: tuple[float, ...]
    device_energy_j: tuple[float, ...]

    # the per-round column of plans.csv -> the field that accumulates it
    FIELDS: ClassVar[dict[str, str]] = {"bytes_per_round": "bytes", "energy_j_per_round": "energy_j",
              "device_energy_j_per_round": "device_energy_j", "sim_time_s_per_round": "sim_time_s",
              "flops_per_round": "flops"}

    @property
    def rounds(self) -> int:
        """How many rounds the bill covers (the scenario's)."""
        return len(self.bytes)

    def at(self, per_round: str, rnd: float) -> float:
        """The cumulative value of ``per_round``'s quantity through round ``ceil(rnd)`` (inf beyond the last)."""
        r = math.ceil(rnd)
        if r < 1:
            raise ValueError(f"a round is 1 or more, got {rnd}")
        if r > self.rounds:
            return math.inf
        return getattr(self, self.FIELDS[per_round])[r - 1]

    @classmethod
    def uniform(cls, row: dict, rounds: int) -> CumulativeBill:
        """The bill of ``rounds`` identical rounds costing ``row``'s per-round columns (hand-made rows in tests)."""
        def acc(col: str) -> tuple:
            return tuple(row[col] * r for r in range(1, rounds + 1))
        return cls(acc("flops_per_round"), acc("bytes_per_round"), acc("sim_time_s_per_round"),
                   acc("energy_j_per_round"), acc("device_energy_j_per_round"))


def cost_to_round(row: dict, per_round: str, rnd: float | None) -> float:
    """``row``'s exact cumulative cost of ``per_round``'s quantity through round ``rnd`` (inf: None or beyond)."""
    if rnd is None:
        return math.inf
    return row[CUMULATIVE].at(per_round, rnd)


def target_columns(row: dict, reach: Reach, suffix: str = "") -> dict[str, object]:
    """The to-target columns of one plan: its exact cumulative bill (``row[CUMULATIVE]``) through the predicted
    round, and through the interval's bounds (a fractional round counts whole: ``ceil``).

    A plan that does not reach the target within its rounds (none predicted, or one beyond its bill's
    last round) gets ``reaches = False`` and infinite costs, but keeps the interval's early bound where the
    bootstrap puts one within its rounds (``- [5, -]``: predicted not to reach, yet 10 % of the refits reach
    it by round 5); a bound beyond the last round is None and its costs infinite.
    """
    bill: CumulativeBill = row[CUMULATIVE]

    def within(r: float | None) -> float | None:
        return r if r is not None and math.ceil(r) <= bill.rounds else None

    rnd = within(reach.round)
    lo, hi = within(reach.lo), (within(reach.hi) if rnd is not None else None)
    out: dict[str, object] = {f"reaches{suffix}": rnd is not None, f"round_to_target{suffix}": rnd,
                              f"round_to_target_lo{suffix}": lo, f"round_to_target_hi{suffix}": hi}
    for per_round, col in TO_TARGET.items():
        out[f"{col}{suffix}"] = cost_to_round(row, per_round, rnd)
        out[f"{col}_lo{suffix}"] = cost_to_round(row, per_round, lo)
        out[f"{col}_hi{suffix}"] = cost_to_round(row, per_round, hi)
    return out
