"""Set-up in proportion to the work: routes and reachability computed once, replicas without weight copies."""

from __future__ import annotations

import copy

import torch

from flexpl.engine.core import meta_copy, shell_copy
from flexpl.engine.simulator import build_topology, setup
from flexpl.models import build_model

from .conftest import digits_star

# every device linked to two edges, both edges to the server: routes from the server have ties
MESH = {
    "server": "server",
    "nodes": [{"name": "server", "profile": "cloud-server"}, {"name": "e1", "profile": "edge-server"},
              {"name": "e0", "profile": "edge-server"}]
    + [{"name": f"dev{i}", "profile": "phone", "holds_data": True} for i in range(5)],
    "links": [{"between": [f"dev{i}", e], "profile": "wifi"} for i in range(5) for e in ("e1", "e0")]
    + [{"between": ["e0", "server"], "profile": "fiber"}, {"between": ["e1", "server"], "profile": "fiber"},
       {"between": ["dev0", "dev1"], "profile": "wifi"}],
}


def test_cached_route_trees_give_the_routes_of_one_search_per_pair():
    scn = digits_star(**MESH)
    many = build_topology(scn)  # each source asked many times: its whole tree is kept after the first
    names = sorted(many.nodes)
    for src in names:
        for dst in names:
            fresh = build_topology(scn)  # a fresh topology: one search that stops at dst
            assert many.route(src, dst) == fresh.route(src, dst), (src, dst)
    assert "server" in many._trees and many.route("dev3", "dev0")[0].dst == "e0"  # ties: by node name
    assert many.reachable("dev2") == set(names) and many.reachable("dev2") is many.reachable("server")


def test_meta_and_shell_copies_match_deep_copies():
    model = build_model({"name": "mlp", "hidden": [16]}, (1, 8, 8), 10, seed=0)
    meta = meta_copy(model)
    ref = [(n, p.shape, p.requires_grad, type(p)) for n, p in copy.deepcopy(model).to("meta").named_parameters()]
    assert [(n, p.shape, p.requires_grad, type(p)) for n, p in meta.named_parameters()] == ref
    assert all(p.is_meta for p in meta.parameters()) and not any(p.is_meta for p in model.parameters())
    shell = shell_copy(model)
    assert shell is not model and all(a is b for a, b in zip(shell.parameters(), model.parameters()))


def test_arena_replicas_get_rows_of_their_own_without_deep_copies():
    st = setup(digits_star(["training.rounds=1"]))
    eng = st.engine
    assert 0 in eng.arenas
    reps = eng.replicas[0]
    first = dict(reps[0].module.named_parameters())
    for r in reps[1:]:  # same initial values, different memory
        for n, p in r.module.named_parameters():
            assert torch.equal(p, first[n]) and p.data_ptr() != first[n].data_ptr()
    glob = dict(eng.global_[0].named_parameters())
    assert all(p.data_ptr() != glob[n].data_ptr() and torch.equal(p, glob[n]) for n, p in first.items())
