"""The plan language: every preset against a trusted reference, exact byte counts, bad plans."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flexpl.data.batching import batches
from flexpl.errors import UserError
from flexpl.models import build_model, stage_bytes_between
from flexpl.sim.engine import path_state
from flexpl.sim.replica import make_optimizer
from flexpl.sim.simulator import run, setup
from tests.conftest import chain_scenario, digits_star

ONE_NODE = [{"name": "server", "profile": "edge-server"}, {"name": "dev0", "profile": "rpi4", "holds_data": True}]
ONE_LINK = [{"between": ["dev0", "server"], "profile": "wifi"}]


def _final_state(scn, node: str | None = None) -> dict[str, torch.Tensor]:
    st = setup(scn)
    run(scn, st=st)
    return path_state(st.engine, node or st.engine.layout.replicas[0][0].members[0])


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], exact: bool = True) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            # callers compare one round: round-off adds up over its steps, no later round amplifies it
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


@pytest.mark.equivalence
@pytest.mark.parametrize("strategy", ["sl", "sfl", "fpl", "fl", "mp"])
def test_single_data_node_equals_centralized(strategy):
    sets = ["training.rounds=1", "training.local_epochs=2", "plan.cut=1"]
    ref = _final_state(digits_star(sets, nodes=ONE_NODE, links=ONE_LINK, strategy="centralized"), "server")
    got = _final_state(digits_star(sets, nodes=ONE_NODE, links=ONE_LINK, strategy=strategy), "dev0")
    _assert_same(ref, got)


def test_sl_and_fpl_single_node_equal_centralized_over_rounds():
    """No averaging happens, so optimizer state carries over rounds exactly as in centralized."""
    sets = ["training.rounds=3", "plan.cut=2", "training.optimizer.momentum=0.9"]
    ref = _final_state(digits_star(sets, nodes=ONE_NODE, links=ONE_LINK, strategy="centralized"), "server")
    for strategy in ("sl", "fpl"):
        got = _final_state(digits_star(sets, nodes=ONE_NODE, links=ONE_LINK, strategy=strategy), "dev0")
        _assert_same(ref, got)


def test_sfl_equals_fl_after_several_rounds():
    # one executor for both (auto trains FedAvg clients stacked, SplitFed's replicas vmapped: equal to round-off)
    sets = ["training.rounds=3", "training.local_epochs=2", "training.optimizer.momentum=0.9",
            "engine.executor=sequential"]
    fl = _final_state(digits_star(sets, strategy="fl"))
    for cut in (1, 2):
        sfl = _final_state(digits_star([*sets, f"plan.cut={cut}"], strategy="sfl"))
        _assert_same(fl, sfl)


def test_fpl_with_cut_zero_equals_centralized_on_the_union_of_batches():
    scn = digits_star(["training.rounds=2", "plan.cut=0", "training.optimizer.momentum=0.9"], strategy="fpl")
    st = setup(scn)
    run(scn, st=st)
    got = path_state(st.engine, "dev0")
    # reference: one model, each step on the nodes' batches stacked in node order
    model = build_model(scn.model, (1, 8, 8), 10, seed=scn.seed)
    opt = make_optimizer(model, scn.training.optimizer)
    for rnd in (1, 2):
        per_node = [(nd, batches(nd, scn.seed, rnd, 1, scn.training.batch_size)) for nd in st.nodes]
        for t in range(max(len(b) for _, b in per_node)):
            xs = [nd.x[b[t]] for nd, b in per_node if t < len(b)]
            ys = [nd.y[b[t]] for nd, b in per_node if t < len(b)]
            F.cross_entropy(model(torch.cat(xs)), torch.cat(ys)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    _assert_same({k: v for k, v in model.state_dict().items()}, got, exact=False)


def test_fpl_features_with_one_branch_equals_the_unsplit_model():
    sets = ["training.rounds=2", "plan.cut=1"]
    ref = _final_state(digits_star(sets, nodes=ONE_NODE, links=ONE_LINK, strategy="centralized"), "server")
    got = _final_state(digits_star(sets, nodes=ONE_NODE, links=ONE_LINK, strategy="fpl-features"), "dev0")
    _assert_same(ref, got)


def test_fpl_features_widens_the_junction():
    s1 = run(digits_star(["training.rounds=1", "plan.cut=1"], strategy="fpl-features")).summary
    model = build_model({"name": "mlp", "hidden": [64, 32]}, (1, 4, 4), 10, seed=0)
    front = sum(p.numel() for p in model.blocks["fc1"].parameters())
    widened = 4 * 64 * 32 + 32  # fc2 takes 4 branches x 64 features
    rest = sum(p.numel() for p in model.blocks["out"].parameters())
    assert s1["params_total"] == 4 * front + widened + rest
    assert s1["final_accuracy"] > 0.5


# ------------------------------------------------------------------ bytes, computed independently

B, WIDTH, F32, I64 = 32, 64, 4, 8   # batch, activation width after fc1 of mlp [64, 32], dtype sizes


def _one_step(strategy: str, **top) -> dict:
    sets = ["training.rounds=1", "training.max_steps_per_round=1", "plan.cut=1"]
    return run(digits_star(sets, strategy=strategy, **top)).summary


def _front_bytes() -> int:
    model = build_model({"name": "mlp", "hidden": [64, 32]}, (1, 8, 8), 10, seed=0)
    return stage_bytes_between(model, 0, 1)


def test_sl_bytes():
    s = _one_step("sl")
    per_step = 2 * B * WIDTH * F32 + B * I64
    # 3 relays (dev0->dev1->dev2->dev3), each crossing two links of the star (dev -> server -> dev)
    assert s["bytes_total"] == 4 * per_step + 3 * 2 * _front_bytes()


def test_sl_relay_wraps_around_in_later_rounds():
    sets = ["training.rounds=2", "training.max_steps_per_round=1", "plan.cut=1"]
    s = run(digits_star(sets, strategy="sl")).summary
    relay_bytes = 2 * _front_bytes()  # every relay crosses two links: dev -> server -> dev
    assert s["bytes_total"] == 2 * 4 * (2 * B * WIDTH * F32 + B * I64) + (3 + 4) * relay_bytes


def test_sfl_bytes():
    s = _one_step("sfl")
    assert s["bytes_total"] == 4 * (2 * B * WIDTH * F32 + B * I64) + 2 * 4 * _front_bytes()


def test_fpl_bytes():
    s = _one_step("fpl")
    assert s["bytes_total"] == 4 * (2 * B * WIDTH * F32 + B * I64)


def test_mp_bytes_on_a_chain():
    scn = chain_scenario(["training.max_steps_per_round=1", "plan.cut=1"], strategy="mp")
    s = run(scn).summary
    raw = B * 64 * F32  # 8x8 digits
    assert s["per_link"]["dev0-edge"]["bytes"] == raw + B * I64           # raw batch + labels
    assert s["per_link"]["edge-cloud"]["bytes"] == 2 * (2 * B * WIDTH * F32 + B * I64)
    assert s["bytes_total"] == 2 * (raw + B * I64) + s["per_link"]["edge-cloud"]["bytes"]


def test_fpl_with_groups_averages_trunks_at_the_cloud():
    scn = chain_scenario(["training.rounds=2", "training.max_steps_per_round=1", "plan.cut=1"], n_dev=2,
                         strategy="fpl")
    # one group (one edge): a single trunk on the edge, no weights move
    s = run(scn).summary
    assert s["plan"]["stages"][1]["replication"] == "single" and s["plan"]["stages"][1]["host"] == "edge"
    assert s["bytes_total"] == 2 * 2 * (2 * B * WIDTH * F32 + B * I64)


def test_three_stage_yaml_plan_runs_end_to_end():
    nodes = [{"name": "cloud", "profile": "cloud-server"}, {"name": "e0", "profile": "edge-server"},
             {"name": "e1", "profile": "edge-server"}] + [
        {"name": f"d{i}", "profile": "phone", "holds_data": True} for i in range(4)]
    links = [{"between": [f"d{i}", f"e{i // 2}"], "profile": "wifi"} for i in range(4)] + [
        {"between": ["e0", "cloud"], "profile": "fiber"}, {"between": ["e1", "cloud"], "profile": "fiber"}]
    plan = {"cut": [1, 2], "stages": [
        {"replication": "per_node", "host": "own"},
        {"replication": "per_group", "host": "own", "sync": {"kind": "fedavg", "at": "cloud"}},
        {"replication": "single", "host": "cloud"}]}
    scn = digits_star(["training.rounds=3"], nodes=nodes, links=links, server="cloud", plan=plan)
    st = setup(scn)
    s = run(scn, st=st).summary
    assert [len(r) for r in st.engine.layout.replicas] == [4, 2, 1]
    assert {r.host for r in st.engine.layout.replicas[1]} == {"e0", "e1"}
    model = build_model(scn.model, (1, 8, 8), 10, seed=0)
    mid = stage_bytes_between(model, 1, 2)
    # the middle stage's weights go cloud -> edge and back every round, one hop each way
    assert s["per_link"]["e0-cloud"]["bytes"] > 3 * 2 * mid
    assert s["final_accuracy"] > 0.5
    assert s["params_total"] == (4 * stage_params(model, 0, 1) + 2 * stage_params(model, 1, 2)
                                 + stage_params(model, 2, 3))


def stage_params(model, a: int, b: int) -> int:
    return sum(p.numel() for n in model.block_names[a:b] for p in model.blocks[n].parameters())


# ------------------------------------------------------------------ bad plans


@pytest.mark.parametrize("sets,top,fragment", [
    (["plan.cut=9"], {"strategy": "sl"}, "plan.cut"),
    (["plan.cut=-1"], {"strategy": "fpl"}, "plan.cut"),
    ([], {"strategy": "nope"}, "strategy"),
    ([], {"plan": {"cut": 1, "stages": [{"replication": "per_node"},
                                         {"replication": "single", "host": "mars"}]}}, "host"),
    ([], {"plan": {"cut": 1, "stages": [{"replication": "per_node", "sync": {"kind": "fedavg", "at": "island"}},
                                         {"replication": "single", "host": "server"}]},
          "nodes": [{"name": "server", "profile": "edge-server"}, {"name": "island", "profile": "edge-server"},
                    *[{"name": f"dev{i}", "profile": "rpi4", "holds_data": True} for i in range(4)]]},
     "unreachable"),
    ([], {"strategy": "fpl-features", "nodes": [{"name": "server", "profile": "edge-server"}] + [
        {"name": f"dev{i}", "profile": "rpi4", "holds_data": True} for i in range(3)]}, "equal patches"),
])
def test_bad_plans_raise_one_line_user_errors(sets, top, fragment):
    if "nodes" in top and "links" not in top:
        top["links"] = [{"between": [n["name"], "server"], "profile": "wifi"}
                        for n in top["nodes"] if n.get("holds_data")]
    with pytest.raises(UserError) as err:
        scn = digits_star(sets, **top)
        setup(scn)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)
