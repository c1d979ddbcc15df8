"""Set-up in proportion to the clients sampled: one index array for the split, nodes and summaries made
on use; every result as before. (Profiles resolved once per name, default groups from one search:
system/test_topology.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from flexpl.config.scenario import load_scenario
from flexpl.data.partition import Summaries, partition, partition_flat, summarize
from flexpl.sim.engine import NodeData
from flexpl.sim.simulator import setup
from tests.conftest import digits_star

LABELS = np.random.default_rng(5).integers(0, 10, 3000)


def _reference_parts(labels, n_nodes, kind, seed, **kw):
    """The split as one array per node, drawn the way partition did before partition_flat (np.array_split)."""
    from flexpl.data.partition import _dirichlet, _shards

    rng = np.random.default_rng(seed)
    if kind == "iid":
        parts = list(np.array_split(rng.permutation(len(labels)), n_nodes))
    elif kind == "dirichlet":
        parts = _dirichlet(labels, n_nodes, rng, kw.get("alpha", 0.5), kw.get("min_size", 1), None)
    else:
        parts = _shards(labels, n_nodes, rng, kw.get("shards_per_node", 2), None)
    return [np.sort(p).astype(np.int64) for p in parts]


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
@pytest.mark.parametrize("n_nodes", [1, 7, 300])
def test_partition_flat_draws_the_same_samples(kind: str, n_nodes: int) -> None:
    flat, off = partition_flat(LABELS, n_nodes, kind, seed=3, alpha=0.3)
    ref = _reference_parts(LABELS, n_nodes, kind, 3, alpha=0.3)
    assert len(off) == n_nodes + 1 and off[0] == 0 and off[-1] == len(flat) == len(LABELS)
    got = [flat[off[i]:off[i + 1]] for i in range(n_nodes)]
    assert all(np.array_equal(a, b) for a, b in zip(got, ref, strict=True))
    assert all(np.array_equal(a, b) and a.dtype == np.int64 for a, b in
               zip(partition(LABELS, n_nodes, kind, seed=3, alpha=0.3), ref, strict=True))


def test_summaries_are_made_on_read_and_match_summarize() -> None:
    parts = partition(LABELS, 50, "dirichlet", seed=1, alpha=0.2, min_size=0)
    flat, off = partition_flat(LABELS, 50, "dirichlet", seed=1, alpha=0.2, min_size=0)
    lazy = Summaries(LABELS, flat, off, 12)
    assert lazy._hist is None and len(lazy) == 50  # nothing counted yet
    eager = []
    for p in parts:  # the definition: one bincount per node
        hist = np.bincount(LABELS[p], minlength=12)
        q = hist[hist > 0] / hist.sum()
        eager.append({"samples": int(hist.sum()), "histogram": [int(h) for h in hist],
                      "entropy_bits": float(-(q * np.log2(q)).sum()) + 0.0 if hist.sum() else 0.0})
    assert list(lazy) == eager == summarize(LABELS, parts, 12)
    assert lazy[3:5] == eager[3:5] and lazy[-1] == eager[-1]
    with pytest.raises(ValueError, match="num_classes"):
        summarize(LABELS, parts, 5)


def test_node_rows_make_index_and_labels_on_first_use() -> None:
    x, y = torch.arange(20.0).reshape(10, 2), torch.arange(10) * 3
    flat = torch.tensor([4, 7, 1, 2, 9])
    nd = NodeData.rows("a", x, y, 0, flat, 1, 4)
    assert len(nd) == 3 and nd._index is None and nd._y is None
    bx, by = nd.batch(torch.tensor([2, 0]))
    assert torch.equal(bx, x[[2, 7]]) and torch.equal(by, y[[2, 7]]) and nd._y is None
    assert torch.equal(nd.index, torch.tensor([7, 1, 2])) and torch.equal(nd.y, y[[7, 1, 2]])
    assert torch.equal(nd.x, x[[7, 1, 2]])
    nd.x = nd.x * 2  # its own samples now: index gone, labels kept
    assert nd.index is None and torch.equal(nd.y, y[[7, 1, 2]]) and len(nd) == 3
    assert nd.meta().x.is_meta and len(nd.meta()) == 3


def test_set_up_data_nodes_read_the_split_rows() -> None:
    scn = digits_star(["data.validation_fraction=0.2", "data.partition.kind=dirichlet"])
    st = setup(scn)
    parts = partition(st.data.train_y.numpy(), len(scn.data_nodes), "dirichlet", seed=scn.seed,
                      alpha=scn.data.partition.alpha, min_size=scn.data.partition.min_samples)
    from flexpl.data.partition import validation_split

    keep, _ = validation_split(parts, 0.2, scn.seed)
    for nd, idx in zip(st.nodes, keep, strict=True):
        assert torch.equal(nd.index, torch.as_tensor(idx)) and torch.equal(nd.y, st.data.train_y[idx])
    assert list(st.parts_summary) == summarize(st.data.train_y.numpy(), keep, st.data.num_classes)


def test_config_yaml_text_is_the_pure_python_emitters(tmp_path) -> None:
    from flexpl.io.results import config_digest, write_yaml

    for scn in (load_scenario("mlp-1000", ["nodes.1.count=50", "links.0.count=50"]), load_scenario("edge-fmnist")):
        data = scn.resolved()
        write_yaml(tmp_path / "config.yaml", data)
        assert (tmp_path / "config.yaml").read_text() == yaml.safe_dump(data, sort_keys=False)
        assert config_digest(tmp_path) == scn.digest()


@pytest.mark.parametrize(("strategy", "shared"), [("fl", True), ("sfl", True), ("fpl", False)])
def test_one_shared_path_evaluates_as_the_walk_over_every_node(strategy: str, shared: bool, monkeypatch) -> None:
    from flexpl.costs.evaluation import eval_flops
    from flexpl.sim.evaluate import Evaluation
    from flexpl.sim.simulator import run

    scn = digits_star([f"strategy={strategy}", "training.rounds=1"])
    st = setup(scn)
    run(scn, st=st)
    eng, w = st.engine, {nd.name: float(len(nd)) for nd in st.nodes}
    assert (eng.shared_path() is not None) == shared
    fast = eng.evaluate(st.data.test_x, st.data.test_y, w), eval_flops(eng, 50, (1, 8, 8), list(w), {})
    monkeypatch.setattr(Evaluation, "shared_path", lambda self: None)
    assert fast == (eng.evaluate(st.data.test_x, st.data.test_y, w), eval_flops(eng, 50, (1, 8, 8), list(w), {}))
