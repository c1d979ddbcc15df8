"""FPL front sync: plan.front_sync / front_sync_every / trunk_sync_every, the fpl-sync preset, its bytes."""

from __future__ import annotations

import pytest

from flexpl.config.scenario import load_scenario
from flexpl.errors import UserError
from flexpl.models import build_model, stage_bytes_between
from flexpl.plan.layout import PRESETS, build_plan, place
from flexpl.sim.simulator import build_topology, run
from tests.conftest import digits_star

TWO_EDGES = {
    "server": "cloud",
    "nodes": [{"name": "cloud", "profile": "cloud-server"}, {"name": "e0", "profile": "edge-server"},
              {"name": "e1", "profile": "edge-server"}]
    + [{"name": f"d{i}", "profile": "phone", "holds_data": True} for i in range(4)],
    "links": [{"between": [f"d{i}", f"e{i // 2}"], "profile": "wifi"} for i in range(4)]
    + [{"between": ["e0", "cloud"], "profile": "fiber"}, {"between": ["e1", "cloud"], "profile": "fiber"}],
}
ONE_STEP = ["training.rounds=1", "training.max_steps_per_round=1", "plan.cut=1"]


def _layout(strategy: str, plan: dict | None = None, scenario: str = "edge-fmnist"):
    scn = load_scenario(scenario, [], strategy)
    topo = build_topology(scn)
    p = build_plan(strategy, plan, topo, 4, 2)
    return p, place(p, topo, scn.data_nodes)


def _front_bytes() -> int:
    model = build_model({"name": "mlp", "hidden": [64, 32]}, (1, 8, 8), 10, seed=0)
    return stage_bytes_between(model, 0, 1)


def test_fpl_preset_keeps_fronts_unsynced_and_fpl_sync_averages_them_at_the_cloud():
    assert "fpl-sync" in PRESETS
    plan, layout = _layout("fpl")
    assert plan.stages[0].sync.kind == "none" and layout.aggregators == [None, "cloud"]
    plan, layout = _layout("fpl-sync")
    assert plan.name == "fpl-sync"
    assert [st.sync.kind for st in plan.stages] == ["fedavg", "fedavg"]
    assert [st.sync.every for st in plan.stages] == [1, 1]
    assert layout.aggregators == ["cloud", "cloud"]  # fronts and edge trunks both averaged at the cloud
    assert len(layout.replicas[0]) == 8 and {r.host for r in layout.replicas[1]} == {"edge0", "edge1"}


def test_front_sync_options_reach_the_preset():
    plan, layout = _layout("fpl", {"front_sync": "all"})
    assert plan.stages[0].sync.kind == "fedavg" and layout.aggregators[0] == "cloud"
    plan, _ = _layout("fpl-sync", {"front_sync": "none"})
    assert plan.stages[0].sync.kind == "none"
    plan, _ = _layout("fpl-sync", {"front_sync_every": 3, "trunk_sync_every": 3})
    assert [st.sync.every for st in plan.stages] == [3, 3]
    plan, _ = _layout("fpl-sync", {"front_sync_every": 2}, scenario="digits-star")  # one group: single trunk
    assert plan.stages[0].sync.every == 2 and plan.stages[1].sync.kind == "none"


@pytest.mark.parametrize("plan, fragment", [
    ({"front_sync_every": 2}, "plan.front_sync_every: the fronts of this plan are never averaged"),
    ({"front_sync": "all", "front_sync_every": 2}, "set plan.front_sync_every and plan.trunk_sync_every equal"),
])
def test_bad_front_sync_options_are_one_line_errors(plan, fragment):
    with pytest.raises(UserError, match=fragment.replace(".", r"\.")):
        _layout("fpl", plan)


def test_front_sync_needs_a_per_device_front():
    with pytest.raises(UserError, match="no per-device front"):
        _layout("fl", {"front_sync": "all"})
    with pytest.raises(UserError, match="applies to a preset"):
        _layout("fpl", {"front_sync": "all", "stages": [{"replication": "per_node"}, {"replication": "per_group"}]})


def test_front_sync_bytes_on_the_device_links():
    """One round, one step: every front goes down (start) and up (end) once more than in fpl, on its own link."""
    base = run(digits_star(ONE_STEP, strategy="fpl")).summary
    sync = run(digits_star(ONE_STEP, strategy="fpl-sync")).summary
    for link in base["per_link"]:
        assert sync["per_link"][link]["bytes"] - base["per_link"][link]["bytes"] == 2 * _front_bytes()
    assert sync["bytes_total"] - base["bytes_total"] == 4 * 2 * _front_bytes()


def test_front_sync_every_two_rounds_halves_the_front_traffic():
    sets = ["training.rounds=2", "training.max_steps_per_round=1", "plan.cut=1"]
    base = run(digits_star(sets, strategy="fpl")).summary["bytes_total"]
    every1 = run(digits_star(sets, strategy="fpl-sync")).summary["bytes_total"]
    every2 = run(digits_star([*sets, "plan.front_sync_every=2"], strategy="fpl-sync")).summary["bytes_total"]
    assert every1 - base == 2 * 4 * 2 * _front_bytes()  # 2 rounds x 4 devices x (down + up)
    assert every2 - base == 4 * 2 * _front_bytes()  # first download, last upload only


def test_front_sync_bytes_cross_the_edges_to_the_cloud():
    base = run(digits_star(ONE_STEP, strategy="fpl", **TWO_EDGES)).summary["per_link"]
    sync = run(digits_star(ONE_STEP, strategy="fpl-sync", **TWO_EDGES)).summary["per_link"]
    fb = _front_bytes()
    for i in range(4):
        assert sync[f"d{i}-e{i // 2}"]["bytes"] - base[f"d{i}-e{i // 2}"]["bytes"] == 2 * fb
    for e in ("e0", "e1"):  # two devices' fronts go through each edge, down and up
        assert sync[f"{e}-cloud"]["bytes"] - base[f"{e}-cloud"]["bytes"] == 2 * 2 * fb


def test_planner_predicts_fpl_sync_exactly_behind_two_edges():
    """planner == simulator for fronts and trunks averaged at the cloud every 2 rounds, over 2 edges."""
    from tests.unit.planner.test_predict import _check_against_simulator

    _check_against_simulator(digits_star(["training.rounds=3", "plan.cut=1", "plan.front_sync_every=2",
                                          "plan.trunk_sync_every=2"], strategy="fpl-sync", **TWO_EDGES))


def test_planner_lists_fpl_sync_candidates():
    from flexpl.planner import enumerate_candidates

    topo = build_topology(load_scenario("edge-fmnist", [], "fpl"))
    cands = [c for c in enumerate_candidates(topo, 4) if c.family in ("fpl-sync", "fpl-group")]
    assert [c.label for c in cands] == [f"{f} cut={c} trunk@edges" for c in range(4) for f in ("fpl-sync", "fpl-group")]


def test_front_sync_group_averages_fronts_at_their_edge():
    plan, layout = _layout("fpl-group")
    assert plan.name == "fpl-group" and plan.stages[0].sync.scope == "group"
    assert layout.aggregators == [None, "cloud"]
    heads = {r.members[0]: layout.aggregator(0, r.index) for r in layout.replicas[0]}
    assert heads == {f"dev{i}": "edge0" if i < 4 else "edge1" for i in range(8)}
    plan, _ = _layout("fpl", {"front_sync": "group", "front_sync_every": 2, "trunk_sync_every": 2})
    assert plan.stages[0].sync == plan.stages[0].sync.__class__("fedavg", 2, scope="group")


def test_front_sync_group_bytes_stay_below_the_edges():
    """Fronts go down from and up to their edge only: the edge-cloud links carry what fpl's do."""
    base = run(digits_star(ONE_STEP, strategy="fpl", **TWO_EDGES)).summary
    grp = run(digits_star(ONE_STEP, strategy="fpl-group", **TWO_EDGES)).summary
    fb = _front_bytes()
    for i in range(4):
        assert grp["per_link"][f"d{i}-e{i // 2}"]["bytes"] - base["per_link"][f"d{i}-e{i // 2}"]["bytes"] == 2 * fb
    for e in ("e0", "e1"):
        assert grp["per_link"][f"{e}-cloud"]["bytes"] == base["per_link"][f"{e}-cloud"]["bytes"]
    assert grp["plan"]["stages"][0]["sync"]["scope"] == "group"


def test_front_sync_group_averages_within_groups_only():
    """After a synced round the two devices of a group share one front; the groups' fronts differ."""
    from flexpl.sim.simulator import setup

    scn = digits_star(["training.rounds=1", "training.max_steps_per_round=2", "plan.cut=1"],
                      strategy="fpl-group", **TWO_EDGES)
    st = setup(scn)
    run(scn, st=st)
    eng = st.engine
    fronts = {n: eng.eval_module(0, eng.layout.serves[0][n]) for n in ("d0", "d1", "d2", "d3")}
    assert fronts["d0"] is fronts["d1"] and fronts["d2"] is fronts["d3"]
    assert fronts["d0"] is not fronts["d2"]
    w0, w2 = (next(iter(fronts[n].state_dict().values())) for n in ("d0", "d2"))
    assert not w0.equal(w2)


def test_planner_predicts_fpl_group_exactly_behind_two_edges():
    from tests.unit.planner.test_predict import _check_against_simulator

    _check_against_simulator(digits_star(["training.rounds=2", "plan.cut=1"], strategy="fpl-group", **TWO_EDGES))


@pytest.mark.slow
def test_fpl_group_killed_and_resumed_is_bit_identical(tmp_path, flexpl_forks):
    """The group heads' averages are part of the checkpoint: a resumed fpl-group run ends as one never stopped."""
    import json
    import signal

    # each run a process of its own (one torch thread), forked from a server that imported the package
    sets = ["--set", "training.rounds=3", "--set", "training.max_steps_per_round=4", "--strategy", "fpl-group"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    r = flexpl_forks.completed(["run", "digits-star", *sets, "--out", str(ref), "--quiet"])
    assert r.returncode == 0, r.stderr
    r = flexpl_forks.completed(["run", "digits-star", *sets, "--out", str(cut), "--quiet"],
                               env={"FLEXPL_TEST_KILL_AT": "3:2"})
    assert r.returncode == -signal.SIGKILL
    r = flexpl_forks.completed(["run", "--resume", str(cut), "--quiet"])
    assert r.returncode == 0, r.stderr
    assert (cut / "rounds.csv").read_text() == (ref / "rounds.csv").read_text()
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, cut))
    assert a["final_accuracy"] == b["final_accuracy"] and a["bytes_total"] == b["bytes_total"]


def test_fpl_group_on_the_dist_backend_matches_the_simulator(tmp_path):
    """Fronts averaged at the edge process (not the server): same bytes, costs and accuracy as the simulator."""
    from tests.conftest import chain_scenario
    from tests.integration.test_dist import SMALL, _assert_same_as_simulator, _sim, launch

    scn = chain_scenario(SMALL, strategy="fpl-group")
    d = launch(scn, tmp_path / "out", timeout_s=60)
    _assert_same_as_simulator(d, _sim(scn))
    assert d["plan"]["stages"][0]["sync"]["scope"] == "group"
