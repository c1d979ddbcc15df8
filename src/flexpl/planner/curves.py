"""Learning curves: fit a class's pilot accuracies and predict the round at which it reaches a target.

A pilot gives accuracies ``y[0..n-1]`` after rounds ``1..n``. With four points or more the fit is
the saturating curve ``a - b * exp(-c * r)`` (least squares in ``a, b`` for each ``c`` on a grid,
``a`` at most 1); with two or three points, ``a + b * ln r``. The predicted round is the first round
``r <= max_rounds`` whose fitted accuracy reaches the target, or the first pilot round that
measured it. The interval is the 10th to 90th percentile of the same prediction refitted on
200 parametric bootstrap replicates (the fit plus Gaussian noise of the residuals' standard
deviation, at least 0.01, or 0.05 from fewer than four rounds; a fixed seed), so it widens when the pilot is short or noisy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
    sd = max(float(np.sqrt(np.mean((f(r) - y) ** 2))), NOISE_FLOOR if len(y) >= 4 else SHORT_NOISE_FLOOR)
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


def target_columns(row: dict, reach: Reach, suffix: str = "") -> dict[str, object]:
    """The to-target columns of one plan: predicted round (and interval) times its exact per-round bill.

    A plan that does not reach the target within its rounds gets ``reaches = False`` and infinite costs.
    """
    out: dict[str, object] = {f"reaches{suffix}": reach.reaches, f"round_to_target{suffix}": reach.round,
                              f"round_to_target_lo{suffix}": reach.lo, f"round_to_target_hi{suffix}": reach.hi}
    for per_round, col in TO_TARGET.items():
        v = float(row[per_round])
        out[f"{col}{suffix}"] = v * reach.round if reach.round is not None else math.inf
        out[f"{col}_lo{suffix}"] = v * reach.lo if reach.lo is not None else math.inf
        out[f"{col}_hi{suffix}"] = v * reach.hi if reach.hi is not None else math.inf
    return out
