"""Successive-halving pilots continue a class from its previous rung: bitwise a from-scratch run, new rounds billed."""

from __future__ import annotations

from flexpl.config.scenario import apply_strategy_overrides, load_scenario, validate_scenario
from flexpl.planner.candidates import candidate_data
from flexpl.planner.classes import assign_classes, learning_key
from flexpl.planner.predict import Planner
from flexpl.sim.engine import Engine
from flexpl.sim.simulator import run, setup
from flexpl.studies.pilots import default_budget, run_pilots

# centralized (data collected in round 1), FedAvg every 2 rounds, the relay, a shared trunk
PLANS = ["centralized", "fl every=2", "sl cut=1", "fpl cut=1 trunk@server"]


def test_a_later_rung_continues_the_pilot_bitwise_and_bills_only_new_rounds(monkeypatch):
    scn = load_scenario("digits-star", ["training.rounds=4", "engine.executor=sequential"], None, 0)
    planner = Planner(scn)
    cands = {c.label: c for c in planner.candidates() if c.label in PLANS}
    names, _ = assign_classes([learning_key(planner.context(c).plan, planner.training_for(c.strategy))
                               for c in cands.values()])
    rows = [{"plan": label, "learning_class": n, "flops_per_round": 0} for label, n in zip(cands, names)]
    assert len(set(names)) == 4
    trained: list[int] = []  # every round the engine starts (Engine.set_round), across all pilots
    set_round = Engine.set_round
    monkeypatch.setattr(Engine, "set_round", lambda eng, rnd, rounds: trained.append(rnd) or set_round(eng, rnd, rounds))
    pilots = run_pilots(scn, planner, cands, rows, default_budget(4, 4))
    monkeypatch.undo()
    assert sorted(trained) == [1] * 4 + [2] * 4 + [3] * 2 + [4] * 2  # rung 2 trained rounds 3-4 only
    assert pilots.rungs == [(2, 4), (4, 2)]
    assert pilots.rounds_trained == 4 * 2 + 2 * (4 - 2) == default_budget(4, 4)  # not 4 * 2 + 2 * 4
    assert sorted(len(a) for a in pilots.accuracy.values()) == [2, 2, 4, 4]
    for cls, acc in pilots.accuracy.items():  # each class from scratch, uninterrupted
        data = candidate_data(scn, cands[pilots.representative[cls]])
        if data.get("strategy") != scn.strategy:
            apply_strategy_overrides(data)
        sc = validate_scenario(data)
        fresh = [float(r["accuracy"]) for r in run(sc, st=setup(sc, dataset=planner.data)).rounds]
        assert acc == fresh[:len(acc)], cls
