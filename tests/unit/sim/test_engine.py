"""The spine: FedAvg bytes, FLOP counts, multi-hop routing, determinism, clock rules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from flexpl.data import load_dataset
from flexpl.models import build_model, state_bytes
from flexpl.sim.simulator import run, setup
from tests.conftest import chain_scenario, digits_star


def test_fl_bytes_are_rounds_times_clients_times_two_models():
    scn = digits_star(["training.rounds=3"])
    s = run(scn).summary
    model = build_model(scn.model, (1, 8, 8), 10, seed=0)
    expected = 3 * 4 * 2 * state_bytes(model)
    assert s["model_bytes"] == state_bytes(model)
    assert s["bytes_total"] == expected
    assert sum(v["bytes"] for v in s["per_link"].values()) == expected


def test_fl_bytes_with_half_the_clients_per_round():
    s = run(digits_star(["training.rounds=4", "training.clients_per_round=0.5"])).summary
    assert s["bytes_total"] == 4 * 2 * 2 * s["model_bytes"]


def test_step_flops_equal_an_independent_count_of_the_whole_model():
    from flexpl.costs.flops import FULL_MAPPING, optimizer_flops
    from flexpl.models import count_params

    scn = digits_star(["training.rounds=1", "training.max_steps_per_round=1"])
    s = run(scn).summary
    model = build_model(scn.model, (1, 8, 8), 10, seed=0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    with FlopCounterMode(display=False, custom_mapping=FULL_MAPPING) as fc:  # [Note: FLOP convention]
        F.cross_entropy(model(x), y).backward()
    with FlopCounterMode(display=False) as classic:
        F.cross_entropy(model(x), y).backward()
    assert fc.get_total_flops() > classic.get_total_flops() > 0
    step = fc.get_total_flops() + optimizer_flops(count_params(model), "sgd", momentum=0.9)
    for n in ("dev0", "dev1", "dev2", "dev3"):
        assert s["per_node"][n]["flops"] == step
    assert s["flops_total"] == 4 * step + s["per_node"]["server"]["flops"]


def test_bytes_count_on_every_link_crossed():
    s = run(chain_scenario(["training.rounds=2"])).summary
    mb = s["model_bytes"]
    assert s["per_link"]["dev0-edge"]["bytes"] == 2 * 2 * mb
    assert s["per_link"]["dev1-edge"]["bytes"] == 2 * 2 * mb
    assert s["per_link"]["edge-cloud"]["bytes"] == 2 * 2 * 2 * mb  # both devices' models cross it
    assert s["bytes_total"] == 4 * 2 * 2 * mb
    assert s["per_node"]["edge"]["bytes_received"] == s["per_node"]["edge"]["bytes_sent"] == 2 * 2 * 2 * mb


def test_same_seed_gives_identical_summary():
    a = run(digits_star(["training.rounds=2"], strategy="fpl")).summary
    b = run(digits_star(["training.rounds=2"], strategy="fpl")).summary
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b


def test_other_seed_changes_the_run():
    a = run(digits_star(["training.rounds=1"], seed=0)).summary
    b = run(digits_star(["training.rounds=1"], seed=1)).summary
    assert a["final_accuracy"] != b["final_accuracy"] or a["final_loss"] != b["final_loss"]


def test_fl_learns_digits():
    s = run(digits_star(["training.rounds=5"])).summary
    assert s["final_accuracy"] > 0.85


def test_clock_rules_on_one_fl_step():
    """Hand-computed virtual time: download, one step on the slowest device, upload."""
    scn = digits_star(["training.rounds=1", "training.max_steps_per_round=1"])
    st = setup(scn)
    s = run(scn, st=st).summary
    topo = st.topo
    mb = s["model_bytes"]
    flops = s["per_node"]["dev0"]["flops"]
    wifi = topo.links["dev0-server"][2]
    down = wifi.latency_s + 8 * mb / wifi.bandwidth_down_bps
    up = wifi.latency_s + 8 * mb / wifi.bandwidth_up_bps
    slowest = max(flops / topo.nodes[n].flops_per_s for n in scn.data_nodes)
    average = s["per_node"]["server"]["flops"] / topo.nodes["server"].flops_per_s  # FedAvg on the server
    assert average > 0
    assert abs(s["sim_time_s"] - (down + slowest + up + average)) < 1e-12
    # energy: FLOPs x J/FLOP on every node, bits x (tx + rx) on every link
    e_comp = sum(s["per_node"][n]["flops"] * topo.nodes[n].energy_per_flop() for n in topo.nodes)
    e_comm = 4 * 2 * 8 * mb * (wifi.tx_j_per_bit + wifi.rx_j_per_bit)
    assert abs(s["energy_j_compute"] - e_comp) < 1e-12 * e_comp
    assert abs(s["energy_j_comm"] - e_comm) < 1e-9 * e_comm


def test_shared_link_serialises_transfers():
    """Two devices behind one edge: their uploads queue on the edge-cloud link (FIFO)."""
    scn = chain_scenario(["training.rounds=1", "training.max_steps_per_round=1"])
    res = run(scn, keep_traces=True)
    trace, starts, ends = res.traces[0]
    # edge-cloud is full duplex: each direction is a queue of its own (see tests/unit/costs/test_trace.py)
    for way in ("edge-cloud edge>cloud", "edge-cloud cloud>edge"):
        iv = sorted((starts[i], ends[i]) for i in range(len(trace)) if trace.resource[i] == way)
        assert len(iv) == 2  # 2 downloads, or 2 uploads
        for (_s0, e0), (s1, _e1) in zip(iv, iv[1:]):
            assert s1 >= e0 - 1e-15


def test_dataset_is_not_modified_by_training():
    data = load_dataset("digits")
    before = data.train_x.clone()
    run(digits_star(["training.rounds=1"], strategy="fpl"))
    assert torch.equal(before, data.train_x)


def test_a_shape_only_run_records_exactly_the_same_costs():
    """[Note: meta replicas] With no local node, nothing is computed but the trace is identical."""
    from flexpl.plan.layout import PRESETS

    keys = ("flops_total", "bytes_total", "sim_time_s", "energy_j_total", "params_total", "per_link")
    for strategy in PRESETS:
        scn = digits_star(["training.rounds=2", "training.max_steps_per_round=3"], strategy=strategy)
        real = run(scn).summary
        st = setup(scn, is_local=lambda node: False)
        meta = run(scn, st=st, evaluate=lambda s: {}).summary
        for k in keys:
            assert meta[k] == real[k], (strategy, k)


def test_node_major_order_changes_nothing_but_speed():
    """[Note: node-major order] FedAvg run node by node equals the lockstep interleaving exactly."""
    from flexpl.sim.engine import path_state

    scn = digits_star(["training.rounds=2", "training.local_epochs=2"], strategy="fl")
    fast = setup(scn)
    a = run(scn, st=fast).summary
    slow = setup(scn)
    slow.engine.independent_paths = False
    b = run(scn, st=slow).summary
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b
    sa, sb = path_state(fast.engine, "dev0"), path_state(slow.engine, "dev0")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
