"""The failure model: dropouts, stragglers, outages, lost transmissions, deadlines, failed hosts."""

from __future__ import annotations

import pytest
import torch

from flexpl.errors import UserError
from flexpl.sim import failures
from flexpl.sim.simulator import run, setup
from tests.conftest import digits_star

ONE_ROUND = ["training.rounds=1", "training.max_steps_per_round=2"]


def test_no_failures_by_default_means_nothing_wasted():
    s = run(digits_star(ONE_ROUND)).summary
    assert s["wasted_flops"] == s["wasted_bytes"] == 0 and s["wasted_energy_j"] == 0


@pytest.mark.parametrize("strategy", ["fl", "sfl", "fpl", "sl"])
def test_thirty_percent_dropout_leaves_out_exactly_the_drawn_nodes(strategy):
    """Each round, the nodes the failure model drops do no training: per-round client counts and
    each device's FLOPs follow the draws (a device's FLOPs = rounds it took part x one round's)."""
    steps = "training.max_steps_per_round=3"
    one = run(digits_star(["training.rounds=1", steps], strategy=strategy)).summary
    scn = digits_star(["training.rounds=4", steps, "failures.dropout=0.3"], strategy=strategy)
    st = setup(scn)
    dropped = [failures.draw(scn.failures, st.topo, st.engine.layout, scn.seed, rnd, 0).dropped
               for rnd in range(1, 5)]
    assert 0 < sum(map(len, dropped)) < 16  # the draw drops someone, but not everybody
    res = run(scn, st=st)
    assert [r["clients"] for r in res.rounds] == [4 - len(d) for d in dropped]
    for n in ("dev0", "dev1", "dev2", "dev3"):
        present = sum(n not in d for d in dropped)
        assert res.summary["per_node"][n]["flops"] == present * one["per_node"][n]["flops"], n


def test_a_dropped_clients_weights_do_not_enter_the_average():
    """FedAvg after a round in which dev1 dropped out is the mean of the other three replicas only."""
    scn = digits_star(ONE_ROUND, failures={"nodes": {"dev1": {"dropout": 1.0}}})
    st = setup(scn)
    run(scn, st=st)
    eng = st.engine
    reps = {r.spec.members[0]: r.module.state_dict() for r in eng.replicas[0]}
    avg = eng.global_[0].state_dict()
    for k, v in avg.items():
        # every present node saw max_steps x batch samples, so the sample-weighted mean is the plain mean
        three = sum(reps[n][k] for n in ("dev0", "dev2", "dev3")) / 3
        assert torch.allclose(v, three, atol=1e-6), k  # one mean of the same tensors, summed in another order
    four = {k: sum(reps[n][k] for n in reps) / 4 for k in avg}
    assert max(float((avg[k] - four[k]).abs().max()) for k in avg) > 1e-4  # dev1's weights would show


def test_scripted_dropout_wastes_exactly_one_download():
    """dev1 always drops out after receiving the model: one download per round thrown away, no upload."""
    s = run(digits_star(ONE_ROUND, failures={"nodes": {"dev1": {"dropout": 1.0}}})).summary
    mb = s["model_bytes"]
    assert s["bytes_total"] == (4 + 3) * mb
    assert s["wasted_bytes"] == mb
    assert s["per_node"]["dev1"]["flops"] == 0
    assert s["wasted_energy_j"] > 0


def test_link_outage_keeps_the_node_out_without_waste():
    s = run(digits_star(["training.rounds=2"], failures={"links": {"dev0-server": {"outage": 1.0}}})).summary
    assert s["bytes_total"] == 2 * 3 * 2 * s["model_bytes"]
    assert s["wasted_bytes"] == 0 and s["per_link"]["dev0-server"]["bytes"] == 0


def test_stragglers_stretch_compute_time():
    base = run(digits_star(ONE_ROUND)).summary
    slow = run(digits_star(ONE_ROUND, failures={"straggler": {"kind": "uniform", "low": 3.0, "high": 3.0}})).summary
    for n in ("dev0", "dev1", "dev2", "dev3"):
        assert slow["per_node"][n]["busy_s"] == pytest.approx(3 * base["per_node"][n]["busy_s"], rel=1e-12)
    assert slow["flops_total"] == base["flops_total"] and slow["sim_time_s"] > base["sim_time_s"]


def test_lost_transmissions_are_resent_and_counted_as_waste():
    base = run(digits_star(ONE_ROUND)).summary
    lossy = run(digits_star(ONE_ROUND, failures={"transfer_loss": 0.5})).summary
    assert lossy["bytes_total"] > base["bytes_total"]
    assert lossy["bytes_total"] - lossy["wasted_bytes"] == base["bytes_total"]
    assert lossy["bytes_total"] % base["model_bytes"] == 0  # whole messages resent


def test_deadline_drops_late_updates_and_counts_their_work():
    """The slowest device (rpi4, dev0) misses a deadline the others meet."""
    scn = digits_star(ONE_ROUND)
    st = setup(scn)
    res = run(scn, st=st, keep_traces=True)
    trace, _starts, ends = res.traces[0]
    arrivals = {trace.src[i]: ends[i] for i in range(len(trace))
                if trace.what[i] == "weights" and trace.dst[i] == "server"}
    ordered = sorted(arrivals.values())
    deadline = (ordered[-2] + ordered[-1]) / 2  # between the two latest uploads
    late = max(arrivals, key=arrivals.get)
    s = run(digits_star(ONE_ROUND, failures={"deadline_s": deadline})).summary
    mb = s["model_bytes"]
    assert s["bytes_total"] == res.summary["bytes_total"]          # the late upload was still sent
    assert s["wasted_bytes"] == mb                                  # ... and thrown away
    assert s["wasted_flops"] == res.summary["per_node"][late]["flops"]  # with the late node's training


def test_failed_shared_host_redoes_the_round_and_counts_the_waste():
    fail = {"nodes": {"server": {"host_failure": 0.5}}}
    scn = digits_star(["training.rounds=3", "training.max_steps_per_round=2"], strategy="fpl", failures=fail)
    st = setup(scn)
    redos = 0
    for rnd in (1, 2, 3):
        attempt = 0
        while failures.draw(scn.failures, st.topo, st.engine.layout, scn.seed, rnd, attempt).host_failed:
            attempt += 1
        redos += attempt
    assert redos > 0  # the seed makes the server fail at least once
    s = run(scn, st=st).summary
    clean = run(digits_star(["training.rounds=3", "training.max_steps_per_round=2"], strategy="fpl")).summary
    per_round = clean["flops_total"] // 3
    assert s["wasted_flops"] == redos * per_round
    assert s["flops_total"] == clean["flops_total"] + redos * per_round
    assert s["final_accuracy"] == clean["final_accuracy"]  # redone rounds start from the same state


def test_a_host_that_always_fails_is_a_clear_error():
    with pytest.raises(UserError, match="failures.host_failure"):
        run(digits_star(ONE_ROUND, strategy="fpl",
                        failures={"host_failure": 1.0, "max_redos": 2}))


def test_failures_are_reproducible():
    sets = ["training.rounds=3", "failures.dropout=0.3", "failures.transfer_loss=0.2",
            "failures.straggler.kind=lognormal"]
    a = run(digits_star(sets, strategy="fl")).summary
    b = run(digits_star(sets, strategy="fl")).summary
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b
