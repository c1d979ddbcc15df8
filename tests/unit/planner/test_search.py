"""Search over per-device cuts by structure (flexpl.planner.search) = brute force by the exact walk.

Small spaces, every plan walked exactly: digits-star (4 devices on one server, fpl-sync cut 2: 81 plans)
and four devices behind two edge servers (fpl, trunks on the edges: 81 plans; two of them alone: every
device at its own cut, the plans the structure walks one by one).
"""

from __future__ import annotations

import math

import pytest

from flexpl import planner as P
from flexpl.errors import UserError
from flexpl.planner.choose import MEMORY_FITS, OBJECTIVES, parse_constraint
from flexpl.planner.curves import CUMULATIVE
from flexpl.planner.search import (
    SEARCH_COLUMNS,
    _objective_key,
    best_device_cuts,
    brute_force,
    cut_structure,
    with_cuts,
)
from tests.conftest import digits_star
from tests.unit.planner.test_predict import edge_scenario

PER_ROUND = ("energy", "device_energy", "bytes")


def _space(scn, strategy: str, devices: int | None = None):
    planner = P.Planner(scn)
    parent = P.Candidate(f"{strategy} cut=2", strategy, {"cut": 2}, strategy, "2")
    devs = planner.topo.data_nodes[:devices] if devices else None
    st = cut_structure(planner, parent, devs)
    _, _, rows = brute_force(planner, parent, "energy", (), devs)
    return planner, parent, devs, st, rows


@pytest.fixture(scope="module")
def star():
    return _space(digits_star(["training.rounds=2"]), "fpl-sync")


@pytest.fixture(scope="module")
def edges():
    return _space(edge_scenario(["training.rounds=2"]), "fpl")


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(b, int):
        return a == b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


@pytest.mark.parametrize("space", ["star", "edges"])
def test_structure_equals_the_exact_walk_of_every_plan(space, request):
    _, _, _, st, rows = request.getfixturevalue(space)
    assert st.space == len(rows) == 81 and st.walks < len(rows)
    for r in rows:
        q = st.vector(r["_cuts"])
        bad = [(col, st.column(q, col), r[col]) for col in SEARCH_COLUMNS if not _same(st.column(q, col), r[col])]
        assert not bad, (r["_cuts"], bad)


def _constraints(rows: list[dict]) -> list[list[str]]:
    cap = sorted(r["peak_memory_device_max"] for r in rows)[len(rows) // 2]
    energy = sorted(r["energy_j_per_round"] for r in rows)[len(rows) // 3]
    return [[], ["raw_data_moved==false"], [f"peak_memory_device_max<={cap}"],
            ["raw_data_moved==false", f"energy_j_per_round<={energy}"]]


@pytest.mark.parametrize("space", ["star", "edges"])
@pytest.mark.parametrize("objective", [*PER_ROUND, "time"])
def test_search_equals_brute_force(space, objective, request):
    planner, parent, devs, st, rows = request.getfixturevalue(space)
    col = OBJECTIVES[objective]
    for texts in _constraints(rows):
        cons = [parse_constraint(t) for t in texts]
        ok = [r for r in rows if all(c.holds(r) for c in (MEMORY_FITS, *cons))]
        got = best_device_cuts(planner, parent, objective, cons, devs, structure=st, max_walks=len(rows) + 1)
        if not ok:
            assert got.cuts is None
            continue
        best = min(r[col] for r in ok)
        # equal up to the rounding of float sums (plans that tie to 1e-16 may swap); integers exactly
        assert got.proven and got.row is not None and math.isclose(got.value, best, rel_tol=1e-12), (objective, texts)
        assert all(c.holds(got.row) for c in (MEMORY_FITS, *cons))
        again = planner.predict(got.candidate).row  # the pick's row is its exact walk
        assert all(got.row[k] == again[k] for k in again if k != "predict_ms")


def test_a_to_target_objective_ranks_like_its_per_round_form(star):
    planner, parent, devs, st, _ = star
    a = best_device_cuts(planner, parent, "device_energy_to_target", (), devs, structure=st)
    b = best_device_cuts(planner, parent, "device_energy", (), devs, structure=st)
    assert a.cuts == b.cuts


def test_devices_at_their_own_cuts_are_walked_one_by_one():
    scn = edge_scenario(["training.rounds=2"])
    planner, parent, devs, st, rows = _space(scn, "fpl-sync", devices=2)
    assert st.explicit  # two devices, cuts 0 and 1 below the parent's 2: both at their own cut
    for r in rows:
        q = st.vector(r["_cuts"])
        assert all(_same(st.column(q, col), r[col]) for col in SEARCH_COLUMNS)
    got = best_device_cuts(planner, parent, "bytes", (), devs, structure=st)
    assert got.value == min(r["bytes_per_round"] for r in rows if MEMORY_FITS.holds(r))


def test_time_bound_is_below_the_simulated_time(edges):
    from flexpl.planner.search import _time_bound

    _, _, _, st, rows = edges
    assert all(_time_bound(st, st.vector(r["_cuts"])) <= r["sim_time_s"] for r in rows)


def test_refusals_are_one_line_user_errors(star):
    planner, parent, devs, st, _ = star
    with pytest.raises(UserError, match="not separable"):
        best_device_cuts(planner, parent, "energy", [parse_constraint("sim_time_s_per_round<=1")], devs, structure=st)
    with pytest.raises(UserError, match="not an FPL preset"):
        cut_structure(planner, P.Candidate("fl", "fl", None, "fl"))
    assert with_cuts(parent, {"dev0": 2}) is parent  # the parent's own cut changes nothing


def test_plan_search_adds_the_best_device_cuts(tmp_path):
    import csv

    from flexpl.cli import main as cli

    out = tmp_path / "plan"
    assert cli(["plan", "digits-star", "--search", "device-cuts", "--objective", "energy", "--out", str(out),
                "--quiet", "--set", "training.rounds=2"]) == 0
    rows = list(csv.DictReader((out / "plans.csv").open()))
    found = [r for r in rows if r["family"].endswith("-search")]
    assert found
    by_plan = {r["plan"]: r for r in rows}
    for r in found:
        parent = by_plan[r["plan"].split(" devcuts=")[0]]
        assert float(r["energy_j_per_round"]) < float(parent["energy_j_per_round"])
        assert r["learning_class"] == parent["learning_class"]


def test_plan_search_refuses_what_it_cannot_separate_before_costing(capsys):
    from flexpl.cli import main as cli

    assert cli(["plan", "digits-star", "--search", "device-cuts", "--constraint", "sim_time_s_per_round<=1",
                "--out", "/nonexistent-never-written"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not separable" in err


@pytest.mark.parametrize("space", ["star", "edges"])
def test_a_to_target_objective_minimises_the_exact_bill_through_its_round(space, request):
    """With the round R at which the parent's class reaches the target, the structure carries the exact
    cumulative bill through R, and the search's minimum equals brute force over every plan's bill to R."""
    planner, parent, devs, _, rows = request.getfixturevalue(space)
    st = cut_structure(planner, parent, devs, to_round=1)  # the fixtures' runs have 2 rounds; round 1 downloads
    for r in rows:
        q = st.vector(r["_cuts"])
        bill = r[CUMULATIVE]
        for key, per_round in (("flops@R", "flops_per_round"), ("bytes@R", "bytes_per_round"),
                               ("energy@R", "energy_j_per_round"), ("dev_energy@R", "device_energy_j_per_round")):
            assert _same(q[st.keys.index(key)], bill.at(per_round, 1)), (r["_cuts"], key)
    differs = 0
    for objective in ("energy_to_target", "device_energy_to_target", "bytes_to_target"):
        per_round = OBJECTIVES[objective.removesuffix("_to_target")]
        for texts in _constraints(rows):
            cons = [parse_constraint(t) for t in texts]
            ok = [r for r in rows if all(c.holds(r) for c in (MEMORY_FITS, *cons))]
            got = best_device_cuts(planner, parent, objective, cons, devs, structure=st, to_round=1)
            if not ok:
                assert got.cuts is None
                continue
            best = min(r[CUMULATIVE].at(per_round, 1) for r in ok)
            assert got.row is not None and math.isclose(got.value, best, rel_tol=1e-12), (objective, texts)
            assert got.value == got.row[CUMULATIVE].at(per_round, 1)
            whole = min(ok, key=lambda r: r[per_round])
            differs += whole[CUMULATIVE].at(per_round, 1) > best * (1 + 1e-9)
    assert differs == 0  # these spaces' rounds cost alike: the whole run's pick is also the cheapest to round 1
    assert _objective_key(st, "bytes_to_target") == "bytes@R" and _objective_key(st, "bytes") == "bytes"
    with pytest.raises(ValueError, match="accumulates to round 1"):
        best_device_cuts(planner, parent, "bytes_to_target", (), devs, structure=st, to_round=2)


def test_plan_searches_the_bill_to_the_pilots_round_and_targets_the_found_plans(tmp_path, monkeypatch):
    """``flexpl plan --target-accuracy A --search device-cuts`` pilots first, then searches each FPL parent
    by its class's predicted round (scripted pilots here: every class at 0.95 from round 1, so R = 1)."""
    import csv

    from flexpl.cli import main as cli
    from flexpl.studies import pilots as pilots_mod

    seen: dict[str, int | None] = {}
    real = best_device_cuts

    def spy(planner, parent, objective, constraints=(), *a, to_round=None, **k):
        seen[parent.label] = to_round
        return real(planner, parent, objective, constraints, *a, to_round=to_round, **k)

    def scripted(scn, planner, cands, rows, budget, console=None, score=None, **ray):
        out = pilots_mod.Pilots(seed=scn.seed)
        for r in rows:
            out.representative.setdefault(r["learning_class"], r["plan"])
            out.accuracy[r["learning_class"]] = [0.95, 0.96]
        out.rounds_trained, out.rungs = 2 * len(out.accuracy), [(2, len(out.accuracy))]
        return out

    monkeypatch.setattr(pilots_mod, "run_pilots", scripted)
    monkeypatch.setattr("flexpl.planner.search.best_device_cuts", spy)
    out = tmp_path / "plan"
    assert cli(["plan", "digits-star", "--set", "training.rounds=2", "--target-accuracy", "0.9",
                "--target-accuracy", "0.95", "--search", "device-cuts", "--objective", "device_energy_to_target",
                "--out", str(out), "--quiet"]) == 0
    assert seen and set(seen.values()) == {1}  # every searched parent: its class's round to the first target
    rows = list(csv.DictReader((out / "plans.csv").open()))
    found = [r for r in rows if r["family"].endswith("-search")]
    assert found
    for r in found:  # the found plans have their class's to-target columns: the bill through round 1
        assert r["round_to_target"] == "1" and r["reaches_0.95"] == "True"
        assert float(r["device_energy_j_to_target"]) == float(r["device_energy_j_to_target_0.9"]) > 0
    # pilots.csv: every class's curve, a row per round, with its representative and the seed
    curves = list(csv.DictReader((out / "pilots.csv").open()))
    classes = {r["learning_class"] for r in rows if not r["family"].endswith("-search")}
    assert {c["learning_class"] for c in curves} == classes and len(curves) == 2 * len(classes)
    assert {(c["round"], c["accuracy"], c["seed"]) for c in curves} == {("1", "0.95", "0"), ("2", "0.96", "0")}
