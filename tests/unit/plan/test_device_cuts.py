"""The cut chosen per device (issue 13): plan.device_cuts, Stage.hosts, the fpl-devcut presets."""

from __future__ import annotations

import pytest

from flexpl.config.scenario import load_scenario
from flexpl.errors import UserError
from flexpl.plan.device_cuts import auto_device_cuts, weak_devices
from flexpl.plan.layout import PRESETS, build_plan, place
from flexpl.sim.simulator import build_topology, run
from tests.conftest import chain_scenario, digits_star

from .test_layout import TWO_EDGES

# digits-star: dev0 rpi4 (1e10 FLOP/s), dev1 phone (2e10), dev2 jetson-nano (8e10), dev3 rpi5 (3e10):
# median 2.5e10, so dev0 and dev1 are weak. Its MLP [64, 32] has 3 blocks; cut 2 -> weak devices cut at 1.
CUT2 = ["plan.cut=2"]
ONE_STEP = ["training.rounds=1", "training.max_steps_per_round=1", *CUT2]
# TWO_EDGES with mixed devices: d0 and d2 (rpi4) weak, d1 and d3 (jetson-nano) strong
MIXED = {**TWO_EDGES, "nodes": TWO_EDGES["nodes"][:3] + [
    {"name": f"d{i}", "profile": "rpi4" if i % 2 == 0 else "jetson-nano", "holds_data": True} for i in range(4)]}


def _plan(strategy: str, plan: dict | None = None, scenario: str = "edge-fmnist", n_blocks: int = 4, cut: int = 2):
    scn = load_scenario(scenario, [], strategy)
    topo = build_topology(scn)
    p = build_plan(strategy, plan, topo, n_blocks, cut)
    return p, place(p, topo, scn.data_nodes), topo


def test_weak_devices_are_those_below_the_median_flops():
    topo = build_topology(load_scenario("edge-fmnist", [], "fpl"))
    assert weak_devices(topo) == ["dev0", "dev2", "dev4", "dev5"]  # rpi4 x2 and phone x2
    assert auto_device_cuts(topo, 2) == dict.fromkeys(["dev0", "dev2", "dev4", "dev5"], 1)
    assert auto_device_cuts(topo, 1) == {}  # never cut at 0: raw samples stay on the device
    alike = build_topology(digits_star(strategy="fpl", **TWO_EDGES))  # four phones: none is weak
    assert weak_devices(alike) == []


def test_a_weak_devices_piece_of_the_front_is_hosted_at_its_edge():
    assert "fpl-devcut" in PRESETS and "fpl-sync-devcut" in PRESETS
    plan, layout, _ = _plan("fpl-devcut")
    assert plan.name == "fpl-devcut"
    assert [(st.start, st.end, st.replication) for st in plan.stages] == [
        (0, 1, "per_node"), (1, 2, "per_node"), (2, 4, "per_group")]
    assert {r.members[0]: r.host for r in layout.replicas[0]} == {f"dev{i}": f"dev{i}" for i in range(8)}
    assert {r.members[0]: r.host for r in layout.replicas[1]} == {
        "dev0": "edge0", "dev1": "dev1", "dev2": "edge0", "dev3": "dev3",
        "dev4": "edge1", "dev5": "edge1", "dev6": "dev6", "dev7": "dev7"}
    assert layout.aggregators == [None, None, "cloud"]
    # synced: both pieces averaged at the cloud, the edge-hosted replicas with the device-hosted ones
    plan, layout, _ = _plan("fpl-sync-devcut")
    assert [st.sync.kind for st in plan.stages] == ["fedavg"] * 3 and layout.aggregators == ["cloud"] * 3
    assert len(layout.replicas[1]) == 8


def test_device_cuts_by_hand_and_on_other_presets():
    plan, layout, _ = _plan("fpl-group", {"device_cuts": {"dev0": 0, "dev6": 1}})
    assert [(st.start, st.end) for st in plan.stages] == [(0, 1), (1, 2), (2, 4)]
    assert dict(plan.stages[0].hosts) == {"dev0": "edge0"} and dict(plan.stages[1].hosts) == {
        "dev0": "edge0", "dev6": "edge1"}
    assert {st.sync.scope for st in plan.stages[:2]} == {"group"}
    # fpl-devcut with a hand-given cut on top of the automatic ones
    plan, _, _ = _plan("fpl-devcut", {"device_cuts": {"dev0": 0, "dev1": 1}})
    assert dict(plan.stages[0].hosts) == {"dev0": "edge0"}
    assert set(dict(plan.stages[1].hosts)) == {"dev0", "dev1", "dev2", "dev4", "dev5"}
    # SplitFed: the rest of a weak client's front is computed next to its back, at the server
    plan, layout, _ = _plan("sfl", {"device_cuts": {"dev0": 1}})
    assert dict(plan.stages[1].hosts) == {"dev0": "cloud"} and layout.replicas[2][0].host == "cloud"
    # front sync spans every piece
    plan, _, _ = _plan("fpl-devcut", {"front_sync": "all", "front_sync_every": 2, "trunk_sync_every": 2})
    assert [st.sync.every for st in plan.stages] == [2, 2, 2] and plan.stages[1].sync.kind == "fedavg"


def test_all_alike_devices_make_fpl_devcut_fpl():
    scn = digits_star(CUT2, strategy="fpl-devcut", **TWO_EDGES)
    topo = build_topology(scn)
    assert build_plan("fpl-devcut", {"cut": 2}, topo, 3, 1).stages == build_plan("fpl", {"cut": 2}, topo, 3, 1).stages


@pytest.mark.parametrize("strategy, plan, fragment", [
    ("fpl", {"device_cuts": {"nobody": 1}}, "plan.device_cuts: 'nobody' is not a data node"),
    ("fpl", {"device_cuts": {"dev0": 3}}, "plan.device_cuts.dev0: cut 3 out of range"),
    ("fpl", {"device_cuts": {"dev0": -1}}, "plan.device_cuts.dev0: cut -1 out of range"),
    ("fl", {"device_cuts": {"dev0": 1}}, "plan.device_cuts: plan 'fl' has no per-device front"),
    ("fpl-features", {"device_cuts": {"dev0": 1}}, "with a batch junction"),
    ("fpl", {"device_cuts": {"dev0": 1}, "stages": [{"replication": "per_node"}, {"replication": "per_group"}]},
     "plan.device_cuts: applies to a preset"),
    ("fpl", {"stages": [{"replication": "per_node", "hosts": {"dev0": "mars"}}, {"replication": "per_group"}]},
     r"plan.stages[0].hosts.dev0: node 'mars' does not exist"),
    ("fpl", {"stages": [{"replication": "per_node"}, {"replication": "per_group", "hosts": {"dev0": "edge0"}}]},
     r"plan.stages[1].hosts: only a per_node stage"),
])
def test_bad_device_cuts_are_one_line_errors(strategy, plan, fragment):
    import re

    with pytest.raises(UserError, match=re.escape(fragment)):
        _plan(strategy, plan)


def test_explicit_stages_take_hosts():
    stages = [{"replication": "per_node", "hosts": {"dev0": "edge0"}},
              {"replication": "per_node"}, {"replication": "per_group", "sync": "fedavg"}]
    plan, layout, _ = _plan("fpl", {"stages": stages, "cut": [1, 2]})
    assert layout.replicas[0][0].host == "edge0" and layout.replicas[1][0].host == "dev0"


def _act_bytes(width: int, batch: int = 32) -> int:
    return 2 * batch * width * 4  # float32 activation up and its gradient down


def test_weak_devices_send_the_activation_of_their_smaller_cut():
    """One step of 32 samples: a weak device's link carries fc1's 64 features (and their gradient) instead of
    fc2's 32; a strong device's link and every total but the bytes stay as in fpl."""
    base = run(digits_star(ONE_STEP, strategy="fpl")).summary
    cut = run(digits_star(ONE_STEP, strategy="fpl-devcut")).summary
    for i, weak in enumerate([True, True, False, False]):
        link = f"dev{i}-server"
        extra = _act_bytes(64) - _act_bytes(32) if weak else 0
        assert cut["per_link"][link]["bytes"] - base["per_link"][link]["bytes"] == extra, link
    assert cut["bytes_total"] - base["bytes_total"] == 2 * (_act_bytes(64) - _act_bytes(32))


def test_fpl_devcut_trains_fpl_bit_for_bit_and_moves_flops_to_the_edge():
    """The same per-device fronts, only hosted in two pieces: identical weights and accuracy; the weak
    devices compute less and the server (their trunk's host) exactly that much more."""
    sets = ["training.rounds=2", "training.max_steps_per_round=3", *CUT2]
    for plain, split in (("fpl", "fpl-devcut"), ("fpl-sync", "fpl-sync-devcut")):
        a = run(digits_star(sets, strategy=plain)).summary
        b = run(digits_star(sets, strategy=split)).summary
        for k in ("final_accuracy", "final_loss", "accuracy_min", "params_total"):
            assert a[k] == b[k], (split, k)
        # averaging the front in two pieces: the 4 weight divisions of FedAvg once more per round
        assert b["flops_total"] - a["flops_total"] == (2 * 4 if split == "fpl-sync-devcut" else 0)
        pa, pb = a["per_node"], b["per_node"]
        for n in ("dev0", "dev1"):
            assert pb[n]["flops"] < pa[n]["flops"], n  # fc1 only, not fc1 and fc2
        for n in ("dev2", "dev3"):
            assert pb[n]["flops"] == pa[n]["flops"], n
        moved = sum(pa[n]["flops"] - pb[n]["flops"] for n in ("dev0", "dev1"))
        if split == "fpl-devcut":
            assert pb["server"]["flops"] - pa["server"]["flops"] == moved
        assert [s["hosts"] for s in b["plan"]["stages"] if "hosts" in s] == [{"dev0": "server", "dev1": "server"}]


def test_fpl_devcut_processes_executor_matches_sequential():
    sets = ["training.rounds=2", "training.max_steps_per_round=3", *CUT2]
    a = run(digits_star([*sets, "engine.executor=sequential"], strategy="fpl-sync-devcut")).summary
    b = run(digits_star([*sets, "engine.executor=processes", "engine.workers=2"], strategy="fpl-sync-devcut")).summary
    for k in ("final_accuracy", "final_loss", "bytes_total", "flops_total", "sim_time_s", "energy_j_total"):
        assert a[k] == b[k], k


def test_planner_predicts_fpl_sync_devcut_exactly():
    from tests.unit.planner.test_predict import _check_against_simulator

    _check_against_simulator(digits_star(["training.rounds=2", *CUT2], strategy="fpl-sync-devcut"))


def test_planner_predicts_fpl_devcut_exactly_behind_two_edges_with_group_sync():
    from tests.unit.planner.test_predict import _check_against_simulator

    _check_against_simulator(digits_star(["training.rounds=2", *CUT2, "plan.front_sync=group"],
                                         strategy="fpl-devcut", **MIXED))


def test_fpl_devcut_on_the_dist_backend_matches_the_simulator(tmp_path):
    """A weak device's piece runs in the edge process: same bytes, costs and accuracy as the simulator."""
    from flexpl.dist.launch import launch
    from tests.integration.test_dist import SMALL, _assert_same_as_simulator, _sim

    nodes = [{"name": "cloud", "profile": "cloud-server"}, {"name": "edge", "profile": "edge-server"},
             {"name": "dev0", "profile": "rpi4", "holds_data": True},
             {"name": "dev1", "profile": "jetson-nano", "holds_data": True}]
    scn = chain_scenario([*SMALL, *CUT2], strategy="fpl-sync-devcut", nodes=nodes)
    d = launch(scn, tmp_path / "out", timeout_s=60)
    _assert_same_as_simulator(d, _sim(scn))
    assert d["plan"]["stages"][1]["hosts"] == {"dev0": "edge"}


# ------------------------------------------------------------ fpl-ecut: cuts chosen by each device's energy

def test_front_costs_and_energy_cuts_of_the_cnn_on_edge_fmnist():
    from flexpl.models import build_model
    from flexpl.plan.device_cuts import energy_device_cuts, front_costs

    topo = build_topology(load_scenario("edge-fmnist", [], "fpl-ecut"))
    cost = front_costs(build_model("cnn", (1, 28, 28), 10, seed=0), (1, 28, 28))
    assert [cost(d)[1] for d in (1, 2, 3)] == [32 * 14 * 14 * 4, 64 * 7 * 7 * 4, 512 * 4]  # conv1, conv2, fc1 out
    assert cost(1)[0] < cost(2)[0] < cost(3)[0]
    # by hand at cut 2: the LTE phone (dev2) pays 0.8 uJ a bit for conv1's extra 12,544 bytes (80 mJ) and
    # saves conv2's ~60 MFLOP at 0.25 nJ (15 mJ): it keeps conv2. Ethernet devices (dev3, dev6) hand it on.
    j2 = 8 * (6.5e-7 + 1.5e-7)
    assert cost(1)[0] * 2.5e-10 + cost(1)[1] * j2 > cost(2)[0] * 2.5e-10 + cost(2)[1] * j2
    cuts = energy_device_cuts(topo, 2, cost)
    assert cuts == {"dev0": 1, "dev3": 1, "dev4": 1, "dev5": 1, "dev6": 1}
    assert energy_device_cuts(topo, 3, cost) == {"dev3": 1, "dev6": 1}  # fc1's 2 KB: cheap to send
    assert energy_device_cuts(topo, 1, cost) == {}


ECUT_LINKS = [{"between": ["dev0", "server"], "profile": "ethernet"}] + [
    {"between": [f"dev{i}", "server"], "profile": "wifi"} for i in (1, 2, 3)]


def test_fpl_ecut_moves_the_front_of_a_device_on_a_cheap_link_only():
    """digits-star, MLP cut 2: sending 64 floats instead of 32 costs Wi-Fi devices more than fc2's FLOPs;
    the Raspberry Pi 4 on Ethernet (dev0) gives fc2 to the server."""
    scn = digits_star([*CUT2, "training.rounds=1", "training.max_steps_per_round=2"], strategy="fpl-ecut",
                      links=ECUT_LINKS)
    s = run(scn).summary
    assert s["plan"]["name"] == "fpl-ecut"
    assert [st.get("hosts") for st in s["plan"]["stages"]] == [None, {"dev0": "server"}, None]
    base = run(digits_star([*CUT2, "training.rounds=1", "training.max_steps_per_round=2"], strategy="fpl",
                           links=ECUT_LINKS)).summary
    assert s["final_accuracy"] == base["final_accuracy"]
    assert s["per_node"]["dev0"]["energy_j"] < base["per_node"]["dev0"]["energy_j"]
    for n in ("dev1", "dev2", "dev3"):
        assert s["per_node"][n]["energy_j"] == pytest.approx(base["per_node"][n]["energy_j"], rel=1e-12), n


def test_planner_predicts_fpl_sync_ecut_exactly():
    from tests.unit.planner.test_predict import _check_against_simulator

    _check_against_simulator(digits_star(["training.rounds=2", *CUT2], strategy="fpl-sync-ecut", links=ECUT_LINKS))


def test_automatic_cuts_keep_to_the_cuts_a_registered_model_allows():
    from flexpl.plan.device_cuts import energy_device_cuts

    topo = build_topology(load_scenario("edge-fmnist", [], "fpl-devcut"))
    weak = ["dev0", "dev2", "dev4", "dev5"]
    assert auto_device_cuts(topo, 2, allowed=[2]) == {}  # only the plan's cut: nobody moves
    assert auto_device_cuts(topo, 3, allowed=[1, 3]) == dict.fromkeys(weak, 1)
    assert auto_device_cuts(topo, 3, allowed=[2, 3]) == {}  # 2 > max(1, 3 // 2)

    def cheap_to_send(d: int) -> tuple[int, int]:  # FLOPs grow, bytes barely: everybody wants the least front
        return 10**9 * d, 1

    cheap_to_send.allowed = [2, 3]  # type: ignore[attr-defined]
    assert set(energy_device_cuts(topo, 3, cheap_to_send).values()) == {2}


def test_fpl_sync_ecut_on_the_dist_backend_matches_the_simulator(tmp_path):
    """Every process picks the same energy cuts from the model: dev0 (Ethernet) hands fc2 to the edge."""
    from flexpl.dist.launch import launch
    from tests.integration.test_dist import SMALL, _assert_same_as_simulator, _sim

    links = [{"between": ["dev0", "edge"], "profile": "ethernet"}, {"between": ["dev1", "edge"], "profile": "wifi"},
             {"between": ["edge", "cloud"], "profile": "fiber"}]
    scn = chain_scenario([*SMALL, *CUT2], strategy="fpl-sync-ecut", links=links)
    d = launch(scn, tmp_path / "out", timeout_s=60)
    _assert_same_as_simulator(d, _sim(scn))
    assert d["plan"]["stages"][1]["hosts"] == {"dev0": "edge"}
