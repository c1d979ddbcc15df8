"""The Python API: the README example as it stands, registries and import paths, losses, aggregators.
(Aggregators by hand: unit/sim/test_aggregate.py.)"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import flexpl
from flexpl.cli import main
from flexpl.errors import UserError
from tests.conftest import digits_star

README = Path(__file__).resolve().parents[2] / "README.md"
SMALL = {"training.rounds": 2, "training.max_steps_per_round": 3}


def readme_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_example_runs_and_predict_gives_the_simulated_bytes():
    ns: dict = {"__name__": "__main__"}
    exec(compile(readme_example(), "README.md", "exec"), ns)  # its own asserts: predict == simulate
    res, pred = ns["result"], ns["predicted"]
    assert isinstance(res, flexpl.Result) and len(res.rounds) == 3
    assert pred["bytes_total"] == res.summary["bytes_total"] > 0
    assert res.summary["plan"]["stages"][0]["blocks"] == [0, 3]  # the registered default cut
    assert 0.5 < res.summary["final_accuracy"] <= 1.0
    t = res.table()
    assert t.columns[:2] == ["round", "accuracy"] and t.column("round") == [1, 2, 3]
    assert "accuracy" in repr(t) and t._repr_html_().startswith("<table>")
    assert "api-example / sfl" in repr(res)


@pytest.mark.slow
def test_readme_model_through_the_dist_backend_moves_the_simulated_bytes(tmp_path, monkeypatch):
    """The README's model and dataset by import path: `flexpl run --backend dist` equals simulate()."""
    mod = "flexpl_readme_example"
    (tmp_path / f"{mod}.py").write_text(readme_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    ns: dict = {"__name__": "not_main"}
    exec(compile(readme_example(), "README.md", "exec"), ns)
    data = dict(ns["SCENARIO"], model={"factory": f"{mod}:tiny_mlp"}, data={"dataset": {"factory": f"{mod}:blobs"}})
    data["training"] = dict(data["training"], rounds=2, max_steps_per_round=4)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path), "--backend", "dist", "--out", str(tmp_path / "dist"), "--quiet",
                 "--timeout", "60"]) == 0
    import json

    d = json.loads((tmp_path / "dist" / "summary.json").read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every worker
    try:
        s = flexpl.simulate(str(path)).summary
    finally:
        torch.set_num_threads(threads)
    assert d["plan"]["stages"][0]["blocks"] == [0, 3]  # the worker found register_model's cut by import path
    assert d["measured_bytes_total"] == d["bytes_total"] == s["bytes_total"] > 0
    for k in ("flops_total", "sim_time_s", "final_accuracy", "final_loss"):
        assert d[k] == s[k], k


# ---------------------------------------------------------------- models, datasets, import paths


def _seq(shape, classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 16), nn.ReLU(), nn.Linear(16, classes))


def test_a_user_sequential_object_is_cut_at_its_children_and_left_untouched():
    seq = _seq((1, 8, 8), 10)
    before = {k: v.clone() for k, v in seq.state_dict().items()}
    scn = flexpl.load_scenario(digits_star(), overrides={**SMALL, "strategy": "sfl", "plan.cut": 2})
    res = flexpl.simulate(scn, model=seq)
    assert res.summary["plan"]["stages"][0]["blocks"] == [0, 2]
    assert res.summary["model_params"] == sum(p.numel() for p in seq.parameters())
    assert all(torch.equal(before[k], v) for k, v in seq.state_dict().items())  # trained a copy
    assert flexpl.predict(scn, model=seq)["bytes_total"] == res.summary["bytes_total"]
    from flexpl.models import ZOO

    assert "python-object-model" not in ZOO  # the temporary name is gone


def test_dataset_objects_and_registered_names(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(120, 6, generator=g), torch.randint(0, 3, (120,), generator=g)
    scn = flexpl.load_scenario(digits_star(), overrides={**SMALL, "data.max_train": 60})
    res = flexpl.simulate(scn, dataset=(x[:100], y[:100], x[100:], y[100:]), model=_seq((6,), 3),
                          out=tmp_path / "run")
    assert sum(res.summary["per_node"][n]["flops"] > 0 for n in ("dev0", "dev1")) == 2
    assert {"summary", "rounds", "config", "timeline", "rounds_nodes", "rounds_links"} <= set(res.paths)
    assert (tmp_path / "run" / "summary.json").exists()
    flexpl.register_dataset("api-test-blobs", lambda seed: (x[:100], y[:100], x[100:], y[100:]))
    flexpl.register_model("api-test-seq", _seq, cuts=["b2"])
    scn2 = flexpl.load_scenario(digits_star(), overrides={**SMALL, "data.dataset": "api-test-blobs",
                                                         "model": "api-test-seq", "strategy": "sfl"})
    s2 = flexpl.simulate(scn2).summary
    assert s2["plan"]["stages"][0]["blocks"] == [0, 2]  # cuts=["b2"]: the child named 2
    with pytest.raises(UserError, match=r"plan.cut: this model may be cut at blocks 2 only"):
        flexpl.simulate(flexpl.load_scenario(scn2, overrides={"plan.cut": 1}))
    with pytest.raises(UserError, match="register_model: 'mlp' is a built-in model"):
        flexpl.register_model("mlp", _seq)
    from flexpl.planner import cost_candidates

    planner, cands, _ = cost_candidates(scn2)  # flexpl plan: only the allowed cut, and no noise about the rest
    assert cands and all((c.plan or {}).get("cut") in (None, 2, [2]) for c in cands)
    assert not any("plan.cut" in sk["reason"] for sk in planner.skipped)


@pytest.mark.parametrize("field,value,match", [
    ("model", {"factory": "no_such_module_xyz:build"}, r"^model.factory: cannot import 'no_such_module_xyz'"),
    ("model", {"factory": "flexpl.models:nope"}, r"^model.factory: module 'flexpl.models' has no attribute 'nope'"),
    ("model", {"factory": "not a path"}, r"^model.factory: 'not a path' is not an import path"),
    ("data.dataset", {"factory": "no_such_module_xyz:load"}, r"^data.dataset.factory: cannot import"),
    ("data.dataset", "no-such-data", r"^data.dataset: unknown dataset 'no-such-data'"),
    ("training.loss", "no_such_loss", r"^training.loss: unknown loss 'no_such_loss'"),
    ("training.aggregator", {"kind": "fedadam", "mu": 0.1}, r"^training.aggregator.mu: only kind fedprox takes mu"),
    ("training.aggregator", {"kind": "nope"}, r"^training.aggregator.kind: unknown aggregator 'nope'"),
])
def test_bad_user_code_fields_are_one_line_errors_with_exit_2(tmp_path, capsys, field, value, match):
    with pytest.raises(UserError, match=match):
        flexpl.load_scenario(digits_star(), overrides={field: value})
    data = digits_star().resolved()
    cur = data
    *head, last = field.split(".")
    for k in head:
        cur = cur[k]
    cur[last] = value
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(match, err.removeprefix("flexpl: error: "))


def test_compare_returns_one_row_per_strategy_and_seed(tmp_path):
    scn = flexpl.load_scenario(digits_star(), overrides={"training.rounds": 1, "training.max_steps_per_round": 2})
    rows = flexpl.compare(scn, ["fl", "sfl"], seeds=[0, 1], out=tmp_path / "cmp")
    assert [(r["strategy"], r["seed"]) for r in rows] == [("fl", 0), ("fl", 1), ("sfl", 0), ("sfl", 1)]
    assert (tmp_path / "cmp" / "comparison.csv").exists() and (tmp_path / "cmp" / "sfl" / "seed1").is_dir()
    assert flexpl.table(rows, ["strategy", "seed"]).rows[0] == ["fl", 0]


# ---------------------------------------------------------------- aggregators and losses


@pytest.mark.parametrize("aggregator,loss", [
    ({"kind": "fedadam", "eta": 0.05}, "cross_entropy"),
    ({"kind": "fedprox", "mu": 0.1}, "cross_entropy"),
    ({"kind": "fedavg"}, "mse_one_hot"),
])
def test_predict_bills_aggregator_and_loss_as_the_simulator(aggregator, loss):
    scn = flexpl.load_scenario(digits_star(), overrides={**SMALL, "strategy": "sfl", "training.aggregator": aggregator,
                                                         "training.loss": loss})
    s = flexpl.simulate(scn).summary
    base = flexpl.simulate(flexpl.load_scenario(digits_star(), overrides={**SMALL, "strategy": "sfl"})).summary
    assert s["flops_total"] != base["flops_total"]  # the extra work is billed
    assert s["final_accuracy"] != base["final_accuracy"] or s["final_loss"] != base["final_loss"]
    p = flexpl.predict(scn)
    assert p["flops_total"] == s["flops_total"] and p["bytes_total"] == s["bytes_total"] == base["bytes_total"]


def test_fedprox_with_mu_zero_is_fedavg_and_a_large_mu_holds_clients_near_the_global_model():
    sets = {**SMALL, "engine.executor": "sequential"}
    avg = flexpl.simulate(flexpl.load_scenario(digits_star(), overrides=sets)).summary
    zero = flexpl.simulate(flexpl.load_scenario(digits_star(), overrides={
        **sets, "training.aggregator": {"kind": "fedprox", "mu": 0.0}})).summary
    assert zero["final_loss"] == avg["final_loss"] and zero["flops_total"] == avg["flops_total"]

    from flexpl.sim.simulator import run, setup

    drift = {}
    for mu in (0.0, 50.0):
        scn = flexpl.load_scenario(digits_star(), overrides={**sets, "training.rounds": 1,
                                                             "training.optimizer.lr": 0.01,
                                                             "training.aggregator": {"kind": "fedprox", "mu": mu}})
        st = setup(scn)
        start = {k: v.clone() for k, v in st.engine.global_[0].state_dict().items()}
        moved = []
        orig = st.engine.upload

        def upload(s, reps, weights, keep=None, _orig=orig, _moved=moved, _start=start):
            for r in reps:
                sd = r.module.state_dict()
                _moved.append(sum(float((sd[k] - _start[k]).pow(2).sum()) for k in _start) ** 0.5)
            return _orig(s, reps, weights, keep)
        st.engine.upload = upload
        run(scn, st=st)
        drift[mu] = max(moved)
    assert 0 < drift[50.0] < 0.6 * drift[0.0]


@pytest.mark.equivalence
def test_a_loss_equal_to_cross_entropy_by_import_path_bills_and_trains_identically(tmp_path, monkeypatch):
    (tmp_path / "flexpl_api_losses.py").write_text(
        "import torch.nn.functional as F\n\ndef ce(logits, labels):\n    return F.cross_entropy(logits, labels)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for executor in ("sequential", "vectorized"):
        sets = {**SMALL, "engine.executor": executor}
        a = flexpl.simulate(flexpl.load_scenario(digits_star(), overrides=sets)).summary
        b = flexpl.simulate(flexpl.load_scenario(digits_star(), overrides={
            **sets, "training.loss": "flexpl_api_losses:ce"})).summary
        assert a["flops_total"] == b["flops_total"] and a["eval_flops"] == b["eval_flops"]
        if executor == "sequential":
            assert a["final_loss"] == b["final_loss"]
        else:  # one batched call against one per replica: the same function, float round-off apart;
            # 2 rounds x 3 steps is too short for round-off to be amplified (holds on any CPU)
            assert b["final_loss"] == pytest.approx(a["final_loss"], rel=1e-4)


def test_fedadam_resumes_its_server_moments_from_the_checkpoint(tmp_path):
    scn = flexpl.load_scenario(digits_star(), overrides={
        "training.rounds": 3, "training.max_steps_per_round": 2, "training.aggregator": {"kind": "fedadam"}})
    full = flexpl.simulate(scn, out=tmp_path / "full").summary

    class Stop(Exception):
        pass

    def stop(row):
        if row["round"] == 2:
            raise Stop

    with pytest.raises(Stop):
        flexpl.simulate(scn, out=tmp_path / "cut", on_round=stop)
    resumed = flexpl.simulate(scn, out=tmp_path / "cut", resume=True).summary
    assert resumed["final_loss"] == full["final_loss"] and resumed["flops_total"] == full["flops_total"]


def test_a_custom_aggregator_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "flexpl_api_agg.py").write_text(
        "import flexpl\n\nclass KeepGlobal(flexpl.Aggregator):\n"
        "    def __init__(self, scale=1.0):\n        self.scale = scale\n"
        "    def aggregate(self, global_state, states, weights, key=''):\n"
        "        return {k: v.clone() for k, v in global_state.items()}\n"
        "    def flops(self, n, e):\n        return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    scn = flexpl.load_scenario(digits_star(), overrides={
        **SMALL, "training.aggregator": {"kind": "flexpl_api_agg:KeepGlobal", "options": {"scale": 2.0}}})
    s = flexpl.simulate(scn).summary
    ref = flexpl.simulate(flexpl.load_scenario(digits_star(), overrides={**SMALL, "training.rounds": 1})).summary
    assert s["final_accuracy"] < ref["final_accuracy"]  # the global model never moves
    assert "KeepGlobal" in sys.modules["flexpl_api_agg"].__dict__
    assert flexpl.predict(scn)["flops_total"] == s["flops_total"]


def test_load_scenario_sources_agree(tmp_path):
    a = flexpl.load_scenario("digits-star", overrides=["training.rounds=2"])
    b = flexpl.load_scenario(digits_star().resolved(), overrides={"training.rounds": 2})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(digits_star().resolved()))
    c = flexpl.load_scenario(path, overrides={"training.rounds": 2})
    assert a.digest() == b.digest() == c.digest()
    assert flexpl.load_scenario(a, strategy="sfl").strategy == "sfl"
    with pytest.raises(UserError, match="training.rounds"):
        flexpl.load_scenario(a, overrides={"training.rounds": 0})


def test_loss_is_used_for_evaluation_and_training(monkeypatch):
    calls = {"n": 0}

    def counted(logits, labels):
        calls["n"] += 1
        return F.cross_entropy(logits, labels)
    flexpl.register_loss("api-test-counted", counted)
    flexpl.simulate(flexpl.load_scenario(digits_star(), overrides={
        "training.rounds": 1, "training.max_steps_per_round": 2, "training.loss": "api-test-counted",
        "engine.executor": "sequential"}))
    # 4 nodes x 2 steps, one evaluation path per node, and counts on meta tensors (FLOPs)
    assert calls["n"] >= 8 + 4


def test_dist_gets_import_paths_for_importable_registered_names_and_refuses_the_rest(tmp_path, monkeypatch):
    from flexpl.api import _bound

    mod = "flexpl_api_dist_names"
    (tmp_path / f"{mod}.py").write_text(readme_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__(mod)  # registers tiny-mlp and blobs from an importable module
    scn = flexpl.load_scenario(sys.modules[mod].SCENARIO, overrides={"engine.backend": "dist"})
    with _bound(scn, None, None) as (bound, local):
        assert not local
        assert bound.model == {"factory": f"{mod}:tiny_mlp"}
        assert bound.data.dataset == {"factory": f"{mod}:blobs"}
    flexpl.register_model("api-test-main-only", lambda input_shape, num_classes: _seq(input_shape, num_classes))
    with pytest.raises(UserError, match="cannot reach the dist backend's worker processes"):
        flexpl.simulate(flexpl.load_scenario(scn, overrides={"model": "api-test-main-only"}))
