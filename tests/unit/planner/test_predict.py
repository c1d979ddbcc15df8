"""The planner: predictions equal what the simulator counts, memory, constraints, best.yaml.
(flexpl calibrate: system/test_calibrate.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from flexpl import planner as P
from flexpl.cli import main as cli
from flexpl.config.scenario import validate_scenario
from flexpl.costs import clock
from flexpl.costs.clock import schedule
from flexpl.errors import UserError
from flexpl.models import build_model
from flexpl.plan.layout import PRESETS
from flexpl.sim.engine import stage_module
from flexpl.sim.simulator import run, setup
from flexpl.studies.validate_plans import validate
from tests.conftest import chain_scenario, digits_star, saved_storages

FIELDS = ("kind", "resource", "duration", "amount", "src", "dst", "label", "what")


def edge_scenario(sets: list[str] | None = None, **top) -> object:
    """Four phones behind two edge servers and a cloud (multi-hop, two groups), digits, small MLP."""
    nodes = [{"name": "cloud", "profile": "cloud-server"}, {"name": "e0", "profile": "edge-server"},
             {"name": "e1", "profile": "edge-server"}] + [
        {"name": f"d{i}", "profile": p, "holds_data": True} for i, p in enumerate(("phone", "rpi4", "rpi5", "phone"))]
    links = [{"between": [f"d{i}", f"e{i // 2}"], "profile": lk} for i, lk in enumerate(("wifi", "lte", "wifi", "5g"))]
    links += [{"between": ["e0", "cloud"], "profile": "fiber"}, {"between": ["e1", "cloud"], "profile": "fiber"}]
    return digits_star(sets, nodes=nodes, links=links, server="cloud", **top)


def _own(scn) -> P.Candidate:
    plan = scn.plan.model_dump(exclude_none=True) if scn.plan else None
    return P.Candidate("own", scn.strategy, plan, "own")


def _close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * abs(b)


def _check_against_simulator(scn) -> P.Prediction:
    """Predict ``scn``'s own plan, run it, and compare every cost; returns the prediction."""
    # the sequential engine (vectorized FedAvg records the same actions step-major, not node-major)
    scn = scn.model_copy(update={"engine": scn.engine.model_copy(update={"executor": "sequential"})})
    st = setup(scn)
    res = run(scn, st=st, keep_traces=True)
    s = res.summary
    planner = P.Planner(scn, dataset=st.data)
    pred = planner.predict(_own(scn))
    r = pred.row
    rounds = scn.training.rounds
    assert r["flops_total"] == s["flops_total"]
    assert r["bytes_total"] == s["bytes_total"]
    assert r["flops_per_round"] * rounds == s["flops_total"]
    assert r["bytes_per_round"] * rounds == s["bytes_total"]
    assert _close(r["sim_time_s"], s["sim_time_s"])
    assert _close(r["energy_j_total"], s["energy_j_total"])
    assert r["params_total"] == s["params_total"]
    for n, d in s["per_node"].items():
        assert pred.per_node[n]["flops"] == d["flops"], n
        assert pred.per_node[n]["bytes_sent"] == d["bytes_sent"], n
        assert pred.per_node[n]["bytes_received"] == d["bytes_received"], n
        assert _close(pred.per_node[n]["energy_j"], d["energy_j"]), n
    for name, d in s["per_link"].items():
        assert pred.per_link[name]["bytes"] == d["bytes"], name
    # the walk records exactly the simulator's first round, action by action
    ctx = planner.context(_own(scn))
    kind = next(iter(planner.round_kinds(ctx)))
    walk = P.ShapeWalk(ctx)
    walk.relay_holder = kind[3]
    ct = walk.walk(kind[0], kind[1], kind[4])
    full, split = clock.expand(ct)
    sim = res.traces[0][0]
    n = len(full) if (kind[2] or split == len(full)) else split
    assert n == len(sim)
    for name in FIELDS:
        assert getattr(full, name)[:n] == getattr(sim, name), name
    assert [tuple(sorted(d)) for d in full.deps[:n]] == sim.deps
    return pred


@pytest.mark.parametrize("strategy", list(PRESETS))
def test_one_round_of_every_preset_is_predicted_exactly(strategy):
    _check_against_simulator(digits_star(["training.rounds=1"], strategy=strategy))


@pytest.mark.parametrize("strategy", ["fl", "sl", "sfl", "mp", "fpl", "fpl-features", "centralized"])
def test_multi_hop_and_several_rounds_are_predicted_exactly(strategy):
    """Devices behind an edge, then a cloud; three rounds (sl's relay wraps around, centralized uploads once)."""
    _check_against_simulator(chain_scenario(["training.rounds=3"], n_dev=2, strategy=strategy))


@pytest.mark.parametrize("plan", [
    {"cut": 1, "stages": [{"replication": "per_node"}, {"replication": "per_group", "sync": {"kind": "fedavg", "every": 2}}]},
    {"cut": [1, 2], "stages": [{"replication": "per_node"},
                               {"replication": "per_group", "sync": {"kind": "fedavg", "every": 2}},
                               {"replication": "single", "host": "cloud"}]},
    {"stages": [{"replication": "per_node", "sync": {"kind": "fedavg", "every": 3, "unit": "step"}}]},
])
def test_groups_three_stages_sync_periods_and_sampled_clients(plan):
    """Two edge groups, FedAvg every 2 rounds or every 3 steps, half the clients per round, 5 rounds."""
    _check_against_simulator(edge_scenario(["training.rounds=5", "training.clients_per_round=0.5"], plan=plan))


def _walked_rounds(scn):
    """(candidate, compressed round) for every kind of round of every candidate plan of ``scn``."""
    planner = P.Planner(scn)
    for cand in planner.candidates():
        ctx = planner.context(cand)
        for kind in planner.round_kinds(ctx):
            walk = P.ShapeWalk(ctx)
            walk.relay_holder = kind[3]
            yield cand, walk.walk(kind[0], kind[1], kind[4])


def test_the_fast_clock_equals_scheduling_the_whole_round():
    """Long rounds (10 local epochs): the clock jumps over repeated steps and still equals ``schedule``."""
    scn = edge_scenario(["training.local_epochs=10", "training.rounds=1"])
    jumped = 0
    for cand, ct in _walked_rounds(scn):
        got = clock.BlockClock(ct).run()
        if got is None:
            continue
        jumped += any(extra > 2 for _, _, extra in ct.blocks)
        full, split = clock.expand(ct)
        assert _close(got[1], max(schedule(full, 0.0)[1])), cand.label
        assert _close(got[0], max(schedule(clock.slice_trace(full, 0, split), 0.0)[1], default=0.0)), cand.label
    assert jumped >= 10


def test_the_whole_round_clock_equals_schedule_to_the_bit():
    """Where the block clock gives up, the round is clocked whole from its compressed form (copies
    of a block share their successor lists); it equals ``schedule`` on the expanded round exactly,
    with and without the upload, also when the round without it goes on from where they part."""
    from flexpl.costs.clock import schedule_range

    scn = edge_scenario(["training.local_epochs=3", "training.rounds=1"])
    forked = 0
    for cand, ct in _walked_rounds(scn):
        full, split = clock.expand(ct)
        start, end = schedule(full, 0.0)
        n = len(full)
        s2, e2, r2 = [0.0] * n, [0.0] * n, [0.0] * n
        schedule_range(full, 0, n, 0.0, s2, e2, r2, {})  # the block clock's slice clock
        assert (start, end) == (s2, e2), cand.label
        want = max(schedule(clock.slice_trace(full, 0, split), 0.0)[1], default=0.0)
        flat = clock.FlatRound(ct)
        assert flat.run(n)[0] == end, cand.label
        assert clock.flat_makespans(flat, (True, True)) == (want, max(end, default=0.0)), cand.label
        flat = clock.FlatRound(ct)
        flat.run(n, fork=flat.split)
        if flat.fork is not None:
            forked += 1
            assert max(flat.resume()) == want, cand.label
    assert forked >= 10


def test_every_candidate_is_a_complete_scenario_that_runs():
    scn = edge_scenario(["training.rounds=1", "training.max_steps_per_round=2"])
    planner = P.Planner(scn)
    cands = planner.candidates()
    families = {c.family for c in cands}
    assert {"centralized", "fl", "sl", "sfl", "mp", "fpl", "fpl-features", "fpl3", "fpl-devcut", "fpl-sync-devcut",
            "fpl-ecut", "fpl-sync-ecut"} <= families
    assert {c.sync_every for c in cands if c.family == "fl"} == {1, 2, 5}
    for cand in cands[:: max(1, len(cands) // 12)]:  # a spread of them, to keep the test fast
        sc = validate_scenario(P.candidate_data(scn, cand))
        s = run(sc, st=setup(sc, dataset=planner.data)).summary
        assert s["flops_total"] == planner.predict(cand).row["flops_total"], cand.label


# ------------------------------------------------------------------ memory


def _measured_peak(module: torch.nn.Module, x: torch.Tensor, momentum: float) -> int:
    """Parameters, gradients, momentum buffers and the storages autograd saves, measured on a real CPU run."""
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=momentum)
    with saved_storages(module) as saved:
        out = module(x)
    F.cross_entropy(out, torch.zeros(x.shape[0], dtype=torch.long)).backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in module.parameters())
    opt.step()
    buffers = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
                  if torch.is_tensor(v))
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    return weights + grads + buffers + sum(saved.values())


def test_peak_memory_of_a_device_and_of_a_shared_trunk_match_a_measurement():
    scn = digits_star(["training.rounds=1"], strategy="fpl", plan={"cut": 1})
    planner = P.Planner(scn)
    pred = planner.predict(_own(scn))
    model = build_model(scn.model, (1, 8, 8), 10, seed=0)
    front, trunk = stage_module(model, 0, 1), stage_module(model, 1, 3)
    dev0 = _measured_peak(front, torch.randn(32, 1, 8, 8), 0.9)
    h = front(torch.randn(4 * 32, 1, 8, 8)).detach().requires_grad_(True)  # the trunk joins 4 batches
    server = _measured_peak(trunk, h, 0.9)
    assert abs(pred.peak_memory["dev0"] - dev0) <= 0.1 * dev0
    assert abs(pred.peak_memory["server"] - server) <= 0.1 * server


def test_optimizer_state_counts_in_memory():
    """Adam keeps two buffers per parameter, SGD with momentum one, plain SGD none."""
    peaks = {}
    for name, sets in (("sgd", ["training.optimizer.momentum=0"]), ("momentum", []),
                       ("adam", ["training.optimizer.name=adam"])):
        scn = digits_star(["training.rounds=1", *sets])
        peaks[name] = P.Planner(scn).predict(_own(scn)).peak_memory["dev0"]
    params = sum(p.numel() * 4 for p in build_model(digits_star().model, (1, 8, 8), 10, seed=0).parameters())
    assert peaks["momentum"] - peaks["sgd"] == params
    assert peaks["adam"] - peaks["sgd"] == 2 * params


def test_memory_that_does_not_fit_makes_a_plan_infeasible():
    nodes = [dict(n) for n in digits_star().model_dump()["nodes"]]
    for n in nodes[1:]:
        n["memory_bytes"] = 20_000  # too small for any replica of the MLP
    scn = digits_star(["training.rounds=1"], nodes=nodes)
    _, _, rows, best = P.plan_scenario(scn, [], "energy")
    fl = next(r for r in rows if r["plan"] == "fl every=1")
    assert fl["peak_memory_device_max"] > 20_000 and not fl["device_memory_fits"] and not fl["feasible"]
    assert best["device_memory_fits"] and best["peak_memory_device_max"] <= 20_000  # e.g. centralized


# ------------------------------------------------------------------ constraints and choice


def test_parse_constraints():
    c = P.parse_constraint("energy_j_per_round<=50")
    assert (c.column, c.op, c.value) == ("energy_j_per_round", "<=", 50.0)
    assert P.parse_constraint(" max_device_bytes_per_round >= 2e6 ").op == ">="
    assert P.parse_constraint("device_memory_fits").value is True
    assert P.parse_constraint("raw_data_moved==false").value is False
    for bad, fragment in (("nope<=3", "unknown column 'nope'"), ("energy_j_per_round<=lots", "not a number"),
                          ("energy_j_per_round", "compare it"), ("=<3", "write COLUMN<=VALUE"),
                          ("device_memory_fits<=1", "true or false")):
        with pytest.raises(UserError) as err:
            P.parse_constraint(bad)
        msg = str(err.value)
        assert msg.startswith("--constraint") and fragment in msg and "allowed columns:" in msg
        assert "sim_time_s_per_round" in msg and "\n" not in msg


def test_pareto_front_and_recommendation_on_hand_made_rows():
    def row(name, e, b, t):
        return {"plan": name, "energy_j_per_round": e, "bytes_per_round": b, "sim_time_s_per_round": t,
                "device_memory_fits": True}
    rows = [row("a", 1, 10, 10), row("b", 2, 5, 10), row("c", 2, 10, 10), row("d", 3, 1, 1)]
    best = P.choose(rows, [], "energy")
    assert best["plan"] == "a"
    assert [r["pareto"] for r in rows] == [True, True, False, True]
    best = P.choose(rows, [P.parse_constraint("bytes_per_round<=5")], "energy")
    assert best["plan"] == "b" and not rows[0]["feasible"]
    with pytest.raises(UserError) as err:
        P.choose(rows, [P.parse_constraint("energy_j_per_round<=0.5")], "energy")
    assert "closest is 'a'" in str(err.value) and "energy_j_per_round<=0.5" in str(err.value)


def test_a_constraint_only_one_plan_meets_returns_that_plan():
    scn = edge_scenario(["training.rounds=5"])
    _, _, rows, _ = P.plan_scenario(scn, [], "energy")
    # a column whose smallest value only one plan reaches, bound just there
    for col in ("sim_time_s_per_round", "energy_j_per_round", "bytes_per_round", "device_energy_j_per_round",
                "max_device_bytes_per_round"):
        low = min(r[col] for r in rows)
        if sum(r[col] <= low for r in rows) == 1:
            break
    else:
        pytest.fail("no column with a unique minimum")
    only = next(r for r in rows if r[col] == low)
    _, _, rows, best = P.plan_scenario(scn, [P.parse_constraint(f"{col}<={low!r}")], "energy")
    assert best["plan"] == only["plan"]
    assert [r["plan"] for r in rows if r["feasible"]] == [only["plan"]]


# ------------------------------------------------------------------ command line


def test_plan_writes_its_files_and_best_yaml_runs(tmp_path: Path, capsys):
    out = tmp_path / "plan"
    assert cli(["plan", "digits-star", "--out", str(out), "--objective", "time", "--quiet"]) == 0
    for f in ("plans.csv", "pareto.png", "best.yaml"):
        assert (out / f).stat().st_size > 0
    header = (out / "plans.csv").read_text().splitlines()[0].split(",")
    for col in ("plan", "flops_per_round", "bytes_per_round", "sim_time_s_per_round", "energy_j_per_round",
                "max_device_bytes_per_round", "peak_memory_bytes_max", "feasible", "device_energy_j_per_round",
                "params_total", "max_params_total", "flops_total", "energy_j_total", "strategy", "cut",
                "sync_every"):
        assert col in header, col
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli(["run", str(out / "best.yaml"), "--out", str(tmp_path / "run"), "--quiet",
                "--set", "training.rounds=1"]) == 0
    assert (tmp_path / "run" / "summary.json").exists()
    capsys.readouterr()


def test_infeasible_request_exits_2_with_one_line(capsys):
    code = cli(["plan", "digits-star", "--out", "/nonexistent-never-written",
                "--constraint", "energy_j_per_round<=1e-12", "--constraint", "bytes_per_round<=1e12"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "no plan meets the constraints" in err and "energy_j_per_round<=1e-12" in err


def test_bad_constraint_exits_2_naming_the_flag(capsys):
    assert cli(["plan", "digits-star", "--constraint", "watts<5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--constraint" in err and "allowed columns" in err


def test_validate_adds_measured_accuracy():
    scn = digits_star(["training.rounds=2"])
    planner, cands, rows, _ = P.plan_scenario(scn, [], "energy")

    class Quiet:
        def print(self, *a, **k) -> None:
            pass

    by_label = {c.label: c for c in cands}
    validate(scn, planner, by_label, rows, 2, Quiet())
    measured = [r for r in rows if r["accuracy"] is not None]
    assert [r["plan"] for r in measured] == [r["plan"] for r in rows if r["feasible"]][:2]
    assert all(r["validated_rounds"] == 2 for r in measured)
    # each measured accuracy is that plan's final accuracy when run on its own, built here from
    # the candidate's strategy and plan (not through the planner's candidate_data)
    for r in measured:
        cand = by_label[r["plan"]]
        own = run(digits_star(["training.rounds=2"], strategy=cand.strategy, plan=cand.plan)).summary
        assert r["accuracy"] == own["final_accuracy"], r["plan"]


def test_a_strategys_overrides_reach_its_prediction():
    """Planning from an fl scenario, the sl candidate is costed with sl's own optimizer (strategy_overrides)."""
    from flexpl.config.scenario import load_scenario

    sets = ["training.rounds=1", "training.max_steps_per_round=2", "engine.executor=sequential"]
    override = ["strategy_overrides.sl.training.optimizer.momentum=0.0"]
    cand = P.Candidate("sl", "sl", None, "sl")
    pred = P.Planner(load_scenario("digits-star", sets + override, "fl", 0)).predict(cand)
    ran = run(load_scenario("digits-star", sets + override, "sl", 0)).summary
    assert ran["flops_total"] == pred.row["flops_total"]
    assert _close(pred.row["energy_j_total"], ran["energy_j_total"])
    # without the override, sl would be billed momentum FLOPs and a momentum buffer it does not have
    plain = P.Planner(load_scenario("digits-star", sets, "fl", 0)).predict(cand)
    assert plain.row["flops_total"] > pred.row["flops_total"]
    assert sum(plain.peak_memory.values()) > sum(pred.peak_memory.values())
