"""Issue 16, defects 1-5: the bill tells the truth (duplex links, every FLOP, evaluation, energy, rounds.csv)."""

from __future__ import annotations

from flexpl.costs.trace import Recorder, schedule
from flexpl.engine.simulator import build_topology

from .conftest import chain_scenario


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
    from flexpl.costs.profiles import load_profiles

    _, links = load_profiles()
    assert links["wifi"].duplex == "half" and links["ble"].duplex == "half"
    for name in ("ethernet", "fiber", "lte", "5g"):
        assert links[name].duplex == "full", name


# --------------------------------------------------------------------------- defect 2: every FLOP


def test_flops_of_linear_relu_cross_entropy_by_hand():
    """B=2 samples, Linear(3, 4) + ReLU, cross-entropy over the 4 outputs (README "Costs, exactly")."""
    import torch
    from torch import nn

    from flexpl.costs.flops import count_fwd_bwd

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    b, i, o = 2, 3, 4
    fwd = (2 * b * i * o + b * o) + b * o + (5 * b * o + b) + (b + 1)  # addmm+bias, relu, log_softmax, nll mean
    bwd = (b + 1) + 4 * b * o + b * o + 2 * o * b * i + b * o  # nll, log_softmax, relu, weight grad, bias grad
    assert (fwd, bwd) == (109, 99)
    assert count_fwd_bwd(m, (b, i), False, loss=True) == (fwd, bwd)
    # the input gradient adds one matmul; the classic count keeps matmuls only
    assert count_fwd_bwd(m, (b, i), True, loss=True) == (fwd, bwd + 2 * b * o * i)
    assert count_fwd_bwd(m, (b, i), False, loss=True, classic=True) == (2 * b * i * o, 2 * o * b * i)


def test_optimizer_and_fedavg_flops_by_hand():
    from flexpl.costs.flops import fedavg_flops, optimizer_flops

    p = 3 * 4 + 4
    assert optimizer_flops(p, "sgd") == 2 * p                    # p -= lr * g
    assert optimizer_flops(p, "sgd", momentum=0.9) == 4 * p      # + buf = m * buf + g
    assert optimizer_flops(p, "sgd", momentum=0.9, weight_decay=1e-4) == 6 * p
    assert optimizer_flops(p, "adam") == 13 * p
    assert fedavg_flops(3, p) == 5 * p + 3                       # 3 multiplies + 2 adds per element, 3 weights
    assert fedavg_flops(1, p) == 0


def test_optimizer_and_aggregation_are_billed_where_they_run():
    """One FedAvg step on digits-star: each device pays forward, loss, backward and its SGD-momentum step;
    the server pays the average of 4 replicas."""
    from flexpl.costs.flops import count_fwd_bwd, fedavg_flops, optimizer_flops
    from flexpl.engine.simulator import run
    from flexpl.models import build_model, count_params

    from .conftest import digits_star

    scn = digits_star(["training.rounds=1", "training.max_steps_per_round=1"])
    s = run(scn).summary
    model = build_model(scn.model, (1, 8, 8), 10, seed=0)
    p = count_params(model)
    step = sum(count_fwd_bwd(model, (32, 1, 8, 8), False, loss=True)) + optimizer_flops(p, "sgd", momentum=0.9)
    for n in scn.data_nodes:
        assert s["per_node"][n]["flops"] == step, n
    assert s["per_node"]["server"]["flops"] == fedavg_flops(4, p) == 7 * p + 4
    assert s["flops_total"] == 4 * step + 7 * p + 4
