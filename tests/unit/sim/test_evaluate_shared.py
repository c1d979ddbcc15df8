"""Shared evaluation (flexpl.sim.evaluate.forward_paths): stacking the paths that meet one trunk and
sharing the test batches gives what running each path alone on chunks of 2,000 gave."""

from __future__ import annotations

import pytest
import torch

from flexpl.sim.simulator import run, setup
from tests.conftest import digits_star


def _one_by_one(eng, x, y, w, chunk=2000):
    """The evaluation as it was: each node's path alone on each chunk; per-node accuracy and loss."""
    out = {}
    for n in w:
        mods = [eng.eval_module(s, eng.layout.serves[s][n]) for s in range(len(eng.plan.stages))]
        for m in mods:
            m.eval()
        parts = []
        with torch.no_grad():
            for i in range(0, x.shape[0], chunk):
                h = x[i:i + chunk]
                for m in mods:
                    h = m(h)
                parts.append(h)
        logits = torch.cat(parts)
        out[n] = (float((logits.argmax(1) == y).float().mean()), float(eng.loss_fn(logits, y)), logits)
    return out


@pytest.mark.parametrize("strategy", ["fpl", "mp", "fpl-group"])
def test_shared_evaluation_gives_the_accuracies_of_one_path_at_a_time(strategy: str) -> None:
    scn = digits_star([f"strategy={strategy}", "training.rounds=1", "training.max_steps_per_round=5"])
    st = setup(scn)
    run(scn, st=st)  # trained a little: every front differs from the others
    eng, x, y = st.engine, st.data.test_x, st.data.test_y
    w = {n.name: float(len(n)) for n in st.nodes}
    ref = _one_by_one(eng, x, y, w)
    if strategy == "fpl":  # (fpl-group averages the fronts of its one group: one path)
        assert len({round(a, 9) for a, _, _ in ref.values()}) > 1 or \
            len({lg.sum().item() for _, _, lg in ref.values()}) > 1  # the paths do differ
    for chunk in (256, 7):
        ev = eng.evaluate(x, y, w, chunk=chunk)
        total = sum(w.values())
        assert ev["accuracy"] == pytest.approx(sum(ref[n][0] * v for n, v in w.items()) / total, abs=1e-12)
        assert ev["accuracy_min"] == min(a for a, _, _ in ref.values())
        ens = torch.stack([lg for _, _, lg in ref.values()]).mean(0)
        assert ev["accuracy_ensemble"] == float((ens.argmax(1) == y).float().mean())
        assert ev["loss"] == pytest.approx(sum(ref[n][1] * v for n, v in w.items()) / total, rel=1e-5)


def test_empty_fronts_are_left_out_so_devices_behind_one_middle_share_one_path() -> None:
    """fpl3 with cut 0 (no front): each device's path is its edge's middle and the cloud's tail, so the four
    devices behind two edges are 2 paths, not 4, with the accuracies of each path run alone. (With the
    middles averaged by FedAvg, every device meets the averaged middle: 1 path.)"""
    from tests.conftest import digits_edges

    plan = {"name": "fpl3", "cut": [0, 1], "stages": [
        {"replication": "per_node", "host": "own"},
        {"replication": "per_group", "host": "own"},  # one middle per edge, never averaged
        {"replication": "single", "host": "cloud"}]}
    scn = digits_edges(["strategy=fpl", "training.rounds=1", "training.max_steps_per_round=5"], plan=plan)
    st = setup(scn)
    run(scn, st=st)
    eng, x, y = st.engine, st.data.test_x, st.data.test_y
    assert sum(p.numel() for p in eng.replicas[0][0].module.parameters()) == 0  # the empty front
    w = {n.name: float(len(n)) for n in st.nodes}
    ref = _one_by_one(eng, x, y, w)
    assert len({lg.sum().item() for _, _, lg in ref.values()}) == 2  # two edges: two different paths
    ev = eng.evaluate(x, y, w, chunk=256)
    assert ev["paths"] == 2
    total = sum(w.values())
    assert ev["accuracy"] == pytest.approx(sum(ref[n][0] * v for n, v in w.items()) / total, abs=1e-12)
    assert ev["accuracy_min"] == min(a for a, _, _ in ref.values())
    ens = torch.stack([lg for _, _, lg in ref.values()]).mean(0)
    assert ev["accuracy_ensemble"] == float((ens.argmax(1) == y).float().mean())
    synced = {**plan, "stages": [plan["stages"][0], {**plan["stages"][1], "sync": {"kind": "fedavg"}},
                                 plan["stages"][2]]}
    scn = digits_edges(["strategy=fpl", "training.rounds=1", "training.max_steps_per_round=5"], plan=synced)
    st = setup(scn)
    run(scn, st=st)
    assert st.engine.evaluate(st.data.test_x, st.data.test_y, w)["paths"] == 1
