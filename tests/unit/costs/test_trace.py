"""Issue 16, defects 1 and 3-5: the bill tells the truth (duplex links, evaluation, energy, rounds.csv).
(Defect 2, every FLOP: costs/test_flops.py.)"""

from __future__ import annotations

from flexpl.costs.clock import schedule
from flexpl.costs.trace import Recorder
from flexpl.sim.simulator import build_topology
from tests.conftest import chain_scenario


def _cross(duplex: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """dev0 uploads to the cloud while the cloud sends to dev1: their edge-cloud hops' (start, end)."""
    links = [{"between": [f"dev{i}", "edge"], "profile": "wifi"} for i in range(2)]
    scn = chain_scenario(links=[*links, {"between": ["edge", "cloud"], "profile": "fiber", "duplex": duplex}])
    topo = build_topology(scn)
    rec = Recorder(topo)
    rec.transfer("dev0", "cloud", 10_000_000, [], "weights")
    rec.transfer("cloud", "dev1", 300_000_000, [], "weights")  # still on edge-cloud when the upload gets there
    t = rec.take()
    start, end = schedule(t, 0.0)
    up, down = [(start[i], end[i]) for i in range(len(t)) if topo.link_of[t.resource[i]] == "edge-cloud"]
    return up, down


def test_full_duplex_link_carries_an_upload_and_a_download_at_once():
    (s_up, e_up), (s_down, e_down) = _cross("full")
    assert s_down < e_up and s_up < e_down  # the two intervals overlap
    assert s_down == 0.0  # the download starts at once: nothing on its direction


def test_half_duplex_link_queues_an_upload_and_a_download():
    (s_up, e_up), (s_down, e_down) = _cross("half")
    assert s_up >= e_down or s_down >= e_up  # one waits for the other


def test_builtin_link_profiles_say_their_duplex():
    from flexpl.system.profiles import load_profiles

    _, links = load_profiles()
    assert links["wifi"].duplex == "half" and links["ble"].duplex == "half"
    for name in ("ethernet", "fiber", "lte", "5g"):
        assert links[name].duplex == "full", name


# --------------------------------------------------------------------------- defect 3: evaluation


def test_evaluation_is_billed_apart_on_the_node_that_runs_it():
    """FedAvg evaluates the server's averaged model: forward + loss on the test set, at the server only."""
    from flexpl.costs.flops import flop_counter
    from flexpl.models import build_model
    from flexpl.sim.simulator import run, setup
    from tests.conftest import digits_star

    scn = digits_star(["training.rounds=2", "training.max_steps_per_round=1"])
    st = setup(scn)
    s = run(scn, st=st).summary
    n_test = len(st.data.test_y)
    import torch
    import torch.nn.functional as F

    model = build_model(scn.model, (1, 8, 8), 10, seed=0).to("meta")
    with torch.no_grad(), flop_counter() as fc:
        F.cross_entropy(model(torch.empty(n_test, 1, 8, 8, device="meta")),
                        torch.empty(n_test, dtype=torch.long, device="meta"))
    one = fc.get_total_flops()
    assert one > 0
    assert s["eval_flops"] == s["per_node"]["server"]["eval_flops"] == 2 * one  # evaluated after each round
    assert all(s["per_node"][n]["eval_flops"] == 0 for n in scn.data_nodes)
    e = 2 * one * st.topo.nodes["server"].energy_per_flop()
    assert abs(s["eval_energy_j"] - e) <= 1e-12 * e
    # not in the training totals ...
    assert s["flops_total"] == sum(s["per_node"][n]["flops"] for n in s["per_node"])
    assert s["per_node"]["server"]["flops"] < s["eval_flops"]
    # ... unless costs.include_eval
    with_eval = run(digits_star(["training.rounds=2", "training.max_steps_per_round=1",
                                 "costs.include_eval=true"])).summary
    assert with_eval["flops_total"] == s["flops_total"] + s["eval_flops"]
    assert abs(with_eval["energy_j_total"] - (s["energy_j_total"] + s["eval_energy_j"])) < 1e-9 * s["energy_j_total"]


# --------------------------------------------------------------------------- defect 4: energy


def test_a_straggler_draws_its_active_power_for_longer():
    from flexpl.sim.simulator import run
    from tests.conftest import digits_star

    sets = ["training.rounds=1", "training.max_steps_per_round=2"]
    base = run(digits_star(sets)).summary
    slow = run(digits_star(sets, failures={"nodes": {"dev0": {"straggler": {"kind": "uniform", "low": 3.0,
                                                                            "high": 3.0}}}})).summary
    a, b = base["per_node"]["dev0"], slow["per_node"]["dev0"]
    assert a["flops"] == b["flops"] > 0
    assert abs(b["busy_s"] - 3 * a["busy_s"]) < 1e-12 * b["busy_s"]
    assert abs(b["energy_j_compute"] - 3 * a["energy_j_compute"]) < 1e-12 * b["energy_j_compute"]
    # the others are untouched
    assert slow["per_node"]["dev1"]["energy_j_compute"] == base["per_node"]["dev1"]["energy_j_compute"]


def test_a_node_is_not_idle_while_it_computes_or_sends():
    """include_idle: dev0's idle energy covers only the time it neither computes nor sends nor receives."""
    from flexpl.sim.simulator import run, setup
    from tests.conftest import digits_star

    scn = digits_star(["training.rounds=1", "training.max_steps_per_round=1", "energy.include_idle=true"])
    st = setup(scn)
    s = run(scn, st=st).summary
    mb = s["model_bytes"]
    wifi = st.topo.links["dev0-server"][2]
    down = wifi.latency_s + 8 * mb / wifi.bandwidth_down_bps
    up = wifi.latency_s + 8 * mb / wifi.bandwidth_up_bps
    d = s["per_node"]["dev0"]
    assert abs(d["comm_s"] - (down + up)) < 1e-12
    idle_s = s["sim_time_s"] - d["busy_s"] - down - up
    assert idle_s > 0
    e = st.topo.nodes["dev0"].idle_power_w * idle_s
    assert abs(d["energy_j_idle"] - e) < 1e-12 * e
    assert abs(d["energy_j"] - (d["energy_j_compute"] + d["energy_j_comm"] + e)) < 1e-12 * d["energy_j"]
    # the radio energy is tx/rx J/bit, on top
    assert abs(d["energy_j_comm"] - 8 * mb * (wifi.tx_j_per_bit + wifi.rx_j_per_bit)) < 1e-12 * d["energy_j_comm"]


def test_a_rounds_bill_without_per_node_rows_has_the_same_totals():
    """bill(per_node=False), what every round's row reads, gives bit for bit the full bill's totals."""
    from flexpl.costs.bill import Totals, bill
    from flexpl.sim.simulator import run, setup
    from tests.conftest import digits_star

    scn = digits_star(["training.rounds=2", "training.max_steps_per_round=2"])
    st = setup(scn)
    t = Totals.empty(st.topo)
    for trace, _, _ in run(scn, st=st, keep_traces=True).traces:  # the run's rounds, billed again
        t.add_round(trace, st.topo)
    t.add_eval({"server": 1000, "dev0": 10}, st.topo)
    for idle in (False, True):
        for ev in (False, True):
            full, short = bill(t, st.topo, t.sim_time, idle, ev), bill(t, st.topo, t.sim_time, idle, ev, per_node=False)
            assert short == {k: full[k] for k in short}, (idle, ev)
            assert set(short) == {"flops", "energy_j", "energy_j_idle", "eval_flops", "eval_energy_j"} | (
                {"idle_j"} if idle else set())
    assert bill(t, st.topo, t.sim_time, True, True, per_node=False)["energy_j_idle"] > 0


# --------------------------------------------------------------------------- defect 5: one definition


COLUMNS = {"flops": "flops_total", "bytes": "bytes_total", "sim_time_s": "sim_time_s", "energy_j": "energy_j_total",
           "energy_j_compute": "energy_j_compute", "energy_j_comm": "energy_j_comm",
           "energy_j_idle": "energy_j_idle", "eval_flops": "eval_flops", "eval_energy_j": "eval_energy_j",
           "wasted_flops": "wasted_flops", "wasted_bytes": "wasted_bytes", "wasted_energy_j": "wasted_energy_j"}


def test_rounds_csv_adds_up_to_the_summary_for_every_cost_column(tmp_path):
    import csv
    import json

    from flexpl.cli import main

    for i, extra in enumerate((["energy.include_idle=true"], ["energy.include_idle=true", "costs.include_eval=true"])):
        out = tmp_path / str(i)
        sets = [a for x in ["training.rounds=3", "training.max_steps_per_round=2", "failures.transfer_loss=0.3",
                            *extra] for a in ("--set", x)]
        assert main(["run", "digits-star", *sets, "--strategy", "sfl", "--out", str(out), "--quiet"]) == 0
        s = json.loads((out / "summary.json").read_text())
        rows = list(csv.DictReader((out / "rounds.csv").open()))
        assert len(rows) == 3
        assert set(COLUMNS) <= set(rows[0])
        for col, key in COLUMNS.items():
            cum = [float(r[col]) for r in rows]
            steps = [cum[0]] + [b - a for a, b in zip(cum, cum[1:])]
            assert abs(sum(steps) - s[key]) <= 1e-9 * max(abs(s[key]), 1e-30), (extra, col)
        assert s["energy_j_idle"] > 0 and s["wasted_bytes"] > 0
        assert (s["eval_flops"] > 0) and (s["flops_total"] > s["eval_flops"])


def test_planner_bills_like_the_simulator_with_idle_energy_adam_and_a_half_duplex_link():
    """The planner's costs (FLOPs with optimizer and FedAvg, per-direction clock, idle time) equal a run's."""
    from tests.conftest import chain_scenario
    from tests.unit.planner.test_predict import _check_against_simulator

    for strategy in ("sfl", "mp", "fpl"):
        for duplex in ("full", "half"):
            links = [{"between": [f"dev{i}", "edge"], "profile": "wifi"} for i in range(2)]
            links.append({"between": ["edge", "cloud"], "profile": "fiber", "duplex": duplex})
            scn = chain_scenario(["training.rounds=2", "training.max_steps_per_round=3", "energy.include_idle=true",
                                  "training.optimizer.name=adam", "training.optimizer.weight_decay=0.001"],
                                 links=links, strategy=strategy)
            _check_against_simulator(scn)


def test_last_tries_reports_the_drawn_tries_without_changing_the_bill_or_the_draws():
    """``Recorder.last_tries`` (what the distributed transport resends) is the per-hop draw, nothing more."""
    import numpy as np

    topo = build_topology(chain_scenario())

    def record(peek: bool) -> tuple[list, list[list[int]]]:
        rec = Recorder(topo)
        rec.loss = {name: 0.5 for name in topo.links}
        rec.loss_rng = np.random.default_rng(7)
        seen = []
        for _ in range(20):
            rec.transfer("dev0", "cloud", 1000, [], "weights")
            if peek:
                seen.append(list(rec.last_tries))
        t = rec.take()
        return list(zip(t.amount, t.wasted, t.duration)), seen

    plain, _ = record(False)
    billed, seen = record(True)
    assert billed == plain  # observing changes nothing
    assert [n * 1000 for tries in seen for n in tries] == [a for a, _, _ in billed]
    assert any(n > 1 for tries in seen for n in tries) and all(len(tries) == 2 for tries in seen)
    rec = Recorder(topo)
    rec.transfer("dev0", "dev0", 1000, [], "weights")
    assert rec.last_tries == []
    rec.transfer("dev0", "edge", 1000, [], "weights")
    assert rec.last_tries == [1]  # no loss model: one try
