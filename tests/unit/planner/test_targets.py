"""Cost to a target accuracy: curve fit and interval on scripted accuracies, columns = the cumulative bill through
the predicted round (= the simulator's rounds.csv), errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flexpl.errors import UserError
from flexpl.planner.choose import choose, parse_constraint, pick
from flexpl.planner.curves import (
    CUMULATIVE,
    CumulativeBill,
    Reach,
    check_target,
    cost_to_round,
    fit_curve,
    predict_reach,
    residual_sd,
    target_columns,
)
from flexpl.planner.recommend import add_targets
from flexpl.studies.pilots import check_budget, default_budget


def _saturating(n: int, a: float = 0.9, b: float = 0.8, c: float = 0.3, noise: float = 0.0) -> list[float]:
    r = np.arange(1, n + 1)
    rng = np.random.default_rng(0)
    return list(a - b * np.exp(-c * r) + rng.normal(0, noise, n))


def test_fit_recovers_a_saturating_curve():
    f = fit_curve(_saturating(8))
    assert abs(float(f(np.array([50.0]))[0]) - 0.9) < 0.01
    assert abs(float(f(np.array([3.0]))[0]) - (0.9 - 0.8 * math.exp(-0.9))) < 0.01


def test_predicted_round_from_a_short_pilot_matches_the_true_curve():
    truth = _saturating(40)
    true_round = next(i + 1 for i, v in enumerate(truth) if v >= 0.85)  # beyond the pilot's 8 rounds
    reach = predict_reach(_saturating(8), 0.85, 40)
    assert true_round > 8 and reach.reaches
    assert abs(reach.round - true_round) <= 1
    assert reach.lo <= reach.round <= reach.hi


def test_noise_widens_the_interval():
    clean = predict_reach(_saturating(6), 0.85, 60)
    noisy = predict_reach(_saturating(6, noise=0.03), 0.85, 60)
    assert noisy.round > 6  # no pilot round measured the target: both are predictions
    assert (noisy.hi or 61) - (noisy.lo or 0) > clean.hi - clean.lo


def test_the_bootstrap_noise_counts_the_fits_degrees_of_freedom():
    """Four pilot rounds and a three-parameter curve leave one degree of freedom: the noise is sqrt(SSE / 1),
    twice the root mean square residual; a flat-ended pilot then keeps the target in its interval (a pilot of
    the edge-fmnist study, alpha = 0.1, that measured 0.7305 in round 4 reached 0.75 in round 6)."""
    y = [0.5155, 0.6535, 0.728, 0.7305]
    f = fit_curve(y)
    rms = float(np.sqrt(np.mean((f(np.arange(1, 5)) - np.asarray(y)) ** 2)))
    assert residual_sd(y) == pytest.approx(2 * rms, rel=1e-9) and rms > 0
    assert residual_sd([0.5, 0.6]) == 0.0
    three = [0.5, 0.62, 0.66]
    g = fit_curve(three)
    sse = float(np.sum((g(np.arange(1, 4)) - np.asarray(three)) ** 2))
    assert residual_sd(three) == pytest.approx(math.sqrt(sse / 1))
    reach = predict_reach(y, 0.75, 20)
    assert reach.lo is not None and reach.lo <= 6 and (reach.hi is None or reach.hi >= 6)


def test_a_target_above_the_plateau_is_not_reached():
    reach = predict_reach(_saturating(8), 0.97, 20)
    assert not reach.reaches and reach.round is None


def test_a_measured_hit_is_the_round():
    reach = predict_reach([0.5, 0.72, 0.71, 0.74], 0.7, 20)
    assert reach.round == 2 and reach.hi == 2


def test_to_target_columns_of_uniform_rounds_are_the_round_times_the_per_round_bill():
    row = {"bytes_per_round": 1000, "energy_j_per_round": 2.5, "device_energy_j_per_round": 1.5,
           "sim_time_s_per_round": 4.0, "flops_per_round": 1e6}
    row[CUMULATIVE] = CumulativeBill.uniform(row, 40)
    reach = predict_reach(_saturating(8), 0.85, 40)
    cols = target_columns(row, reach)
    assert cols["bytes_to_target"] == 1000 * reach.round
    assert cols["device_energy_j_to_target_lo"] == 1.5 * reach.lo
    assert cols["sim_time_s_to_target_hi"] == 4.0 * reach.hi
    never = target_columns(row, predict_reach(_saturating(8), 0.99, 40))
    assert never["reaches"] is False and math.isinf(never["energy_j_to_target"])
    # predicted not to reach, yet the interval's early bound is within the rounds: it is kept with its bill
    maybe = target_columns(row, Reach(0.75, None, 5, None, 40))
    assert maybe["reaches"] is False and maybe["round_to_target"] is None and maybe["round_to_target_hi"] is None
    assert maybe["round_to_target_lo"] == 5 and maybe["bytes_to_target_lo"] == 5000
    assert math.isinf(maybe["bytes_to_target"]) and math.isinf(maybe["bytes_to_target_hi"])


def _rows():
    base = {"device_memory_fits": True, "bytes_per_round": 10.0, "sim_time_s_per_round": 1.0,
            "energy_j_per_round": 1.0, "flops_per_round": 1.0}
    rows = [  # cheap per round but learns slowly; dear per round but learns fast; one that moves raw data
        {**base, "plan": "slow", "learning_class": "C1", "device_energy_j_per_round": 1.0, "raw_data_moved": False},
        {**base, "plan": "fast", "learning_class": "C2", "device_energy_j_per_round": 2.0, "raw_data_moved": False},
        {**base, "plan": "raw", "learning_class": "C3", "device_energy_j_per_round": 0.1, "raw_data_moved": True},
    ]
    for r in rows:
        r[CUMULATIVE] = CumulativeBill.uniform(r, 40)
    return rows


def test_the_pick_is_the_cheapest_to_the_target_not_per_round():
    rows = _rows()
    acc = {"C1": _saturating(8, c=0.1), "C2": _saturating(8, c=0.8), "C3": _saturating(8, c=0.8)}
    add_targets(rows, acc, [0.8], 40)
    by = {r["plan"]: r for r in rows}
    assert by["fast"]["round_to_target"] < by["slow"]["round_to_target"]
    assert by["slow"]["round_to_target_0.8"] == by["slow"]["round_to_target"]
    no_raw = [parse_constraint("raw_data_moved==false")]
    assert pick(rows, no_raw, "device_energy_to_target")["plan"] == "fast"
    assert choose(rows, no_raw, "device_energy_to_target")["plan"] == "fast"
    assert choose(rows, [], "device_energy")["plan"] == "raw"


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_bad_targets_are_one_line_errors(bad):
    with pytest.raises(UserError, match=r"--target-accuracy: must be a fraction in \(0, 1\]"):
        check_target(bad)


def test_bad_budgets_are_one_line_errors():
    with pytest.raises(UserError, match="--pilot-budget: 5 rounds cannot give each of the 4 learning classes"):
        check_budget(5, 4, 20)
    with pytest.raises(UserError, match="pilots need at least 2"):
        check_budget(None, 4, 1)
    # rung 1: 2 rounds each; later rungs continue their pilots, so only the new rounds count
    assert check_budget(None, 4, 20) == default_budget(4, 20) == 4 * 2 + 2 * (4 - 2) + 1 * (8 - 4)


def test_a_to_target_objective_without_targets_is_a_one_line_error():
    with pytest.raises(UserError, match="--objective device_energy_to_target: .*--target-accuracy"):
        choose(_rows(), [], "device_energy_to_target")


@pytest.mark.parametrize(("args", "fragment"), [
    (["--target-accuracy", "1.5"], "--target-accuracy: must be a fraction in (0, 1]"),
    (["--target-accuracy", "0.7", "--pilot-budget", "0"], "--pilot-budget: must be a positive number of rounds"),
    (["--pilot-budget", "10"], "--pilot-budget: only --target-accuracy A runs pilots"),
    (["--objective", "bytes_to_target"], "--objective bytes_to_target: costs to a target need --target-accuracy"),
])
def test_the_command_says_one_line_and_exits_2(args, fragment, capsys):
    from flexpl.cli import main

    assert main(["plan", "digits-star", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_sampled_clients_and_idle_energy_follow_the_simulator_round_by_round():
    """Half the clients per round (each round its own) and idle energy (it follows the clock so far)."""
    _check_cumulative(["engine.executor=sequential", "training.clients_per_round=0.5", "energy.include_idle=true"])


def test_the_bill_to_a_round_is_the_cumulative_walk_and_the_simulators_rounds_csv():
    """FedAvg every 2 rounds over 3: round 1 downloads, round 2 uploads, round 3 does both; so the bill to
    round r is the walked cumulative bill, which equals what a real run counts through round r, not r x average."""
    row, measured = _check_cumulative(["engine.executor=sequential"])
    bill = row[CUMULATIVE]
    per = [b - a for a, b in zip((0, *bill.bytes), bill.bytes)]
    assert per[0] == per[1] and per[2] == per[0] + per[1]  # one way, the other way, both ways
    for r, m in enumerate(measured):
        assert math.isclose(bill.device_energy_j[r], m["device_energy_j"], rel_tol=1e-9), r + 1
    cols = target_columns(row, Reach(0.7, 2, 1, 3, 3))
    assert cols["bytes_to_target"] == measured[1]["bytes"] != 2 * row["bytes_per_round"]
    assert cols["bytes_to_target_lo"] == measured[0]["bytes"]
    assert cols["bytes_to_target_hi"] == measured[2]["bytes"]
    assert cols["flops_to_target"] == measured[1]["flops"]
    assert math.isclose(cols["device_energy_j_to_target"], measured[1]["device_energy_j"], rel_tol=1e-9)
    assert math.isclose(cols["sim_time_s_to_target"], measured[1]["sim_time_s"], rel_tol=1e-9)
    # a fractional round counts whole
    assert cost_to_round(row, "bytes_per_round", 1.5) == measured[1]["bytes"]


def _check_cumulative(sets: list[str], label: str = "fl every=2") -> tuple[dict, list[dict]]:
    """Predict ``label`` on digits-star with ``sets``, run it, compare the cumulative bill with rounds.csv
    (bytes, FLOPs, time, energy); returns the row and the run's rounds."""
    from flexpl import planner as P
    from flexpl.config.scenario import validate_scenario
    from flexpl.planner.candidates import candidate_data
    from flexpl.sim.simulator import run, setup
    from tests.conftest import digits_star

    scn = digits_star(sets)
    assert scn.training.rounds == 3
    data = setup(scn).data
    planner = P.Planner(scn, dataset=data)
    cand = next(c for c in planner.candidates() if c.label == label)
    row = planner.predict(cand).row
    bill = row[CUMULATIVE]
    assert bill.bytes[-1] == row["bytes_total"] and bill.flops[-1] == row["flops_total"]
    assert math.isclose(bill.energy_j[-1], row["energy_j_total"], rel_tol=1e-9)
    assert math.isclose(bill.device_energy_j[-1], row["device_energy_j_total"], rel_tol=1e-9)
    assert math.isclose(bill.sim_time_s[-1], row["sim_time_s"], rel_tol=1e-9)

    sc = validate_scenario(candidate_data(scn, cand))
    measured = run(sc, st=setup(sc, dataset=data)).rounds
    for r, m in enumerate(measured):
        assert bill.bytes[r] == m["bytes"] and bill.flops[r] == m["flops"], r + 1
        assert math.isclose(bill.sim_time_s[r], m["sim_time_s"], rel_tol=1e-9), r + 1
        assert math.isclose(bill.energy_j[r], m["energy_j"], rel_tol=1e-9), r + 1
        assert math.isclose(bill.device_energy_j[r], m["device_energy_j"], rel_tol=1e-9), r + 1
    return row, measured


def test_a_round_beyond_the_scenarios_rounds_is_not_reached():
    bill_row = {"bytes_per_round": 10, "energy_j_per_round": 1.0, "device_energy_j_per_round": 1.0,
                "sim_time_s_per_round": 1.0, "flops_per_round": 5}
    bill_row[CUMULATIVE] = CumulativeBill.uniform(bill_row, 3)
    slow = predict_reach(_saturating(3, c=0.05), 0.85, 3)
    assert slow.round is None
    for reach in (slow, Reach(0.85, 4, 2, 6, 6)):  # none predicted, or one past the bill's 3 rounds
        cols = target_columns(bill_row, reach)
        assert cols["reaches"] is False and cols["round_to_target"] is None
        assert math.isinf(cols["bytes_to_target"]) and math.isinf(cols["device_energy_j_to_target_hi"])
    # the early bound (round 2) is within the bill's rounds: kept, with its bill
    assert target_columns(bill_row, Reach(0.85, 4, 2, 6, 6))["device_energy_j_to_target_lo"] == 2.0
    cols = target_columns(bill_row, Reach(0.85, 3, 2, 5, 6))  # reached at 3; the interval's top is beyond
    assert cols["reaches"] is True and cols["bytes_to_target"] == 30 and cols["bytes_to_target_lo"] == 20
    assert cols["round_to_target_hi"] is None and math.isinf(cols["bytes_to_target_hi"])


def test_best_yaml_says_the_predicted_bill_to_the_target(tmp_path):
    from flexpl.planner.candidates import Candidate
    from flexpl.planner.recommend import write_best
    from tests.conftest import digits_star

    scn = digits_star()
    row = _rows()[1]
    add_targets([row], {"C2": _saturating(8, c=0.8)}, [0.8], 40)
    write_best(tmp_path / "best.yaml", scn, Candidate("fl", "fl", None, "fl"), row, "device_energy_to_target")
    text = (tmp_path / "best.yaml").read_text()
    assert f"reach the first target in round {row['round_to_target']}: " in text
    assert f"{row['device_energy_j_to_target']:.4g} J on the devices" in text


def test_the_pilots_rank_a_class_by_its_cheapest_members_bill_through_the_predicted_round():
    from flexpl.cli.plan import _pilot_score

    row = _rows()[0]
    # the same average per round (1 J), but one pays up front and one at the end
    early = {**row, "plan": "early", CUMULATIVE: CumulativeBill((1,) * 4, (10,) * 4, (1.0,) * 4, (4.0,) * 4,
                                                                 (4.0, 4.0, 4.0, 4.0))}
    late = {**row, "plan": "late", CUMULATIVE: CumulativeBill((1,) * 4, (10,) * 4, (1.0,) * 4, (4.0,) * 4,
                                                                (0.0, 0.0, 0.0, 4.0))}
    acc = [0.5, 0.9]  # measured: reaches 0.8 in round 2
    assert _pilot_score([early], [], "device_energy_to_target", 0.8, 4, 0)("C1", acc) == 4.0
    assert _pilot_score([early, late], [], "device_energy_to_target", 0.8, 4, 0)("C1", acc) == 0.0
