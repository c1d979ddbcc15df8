"""Topology (flexpl.system.topology): routes and reachability computed once, default groups from one search,
the link of every clock resource, profiles resolved once per name."""

from __future__ import annotations

import pytest

from flexpl.config.scenario import load_scenario
from flexpl.errors import UserError
from flexpl.sim.simulator import build_topology
from flexpl.system.topology import Topology, _profiles_in_order, hop_resource
from tests.conftest import chain_scenario, digits_star

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


@pytest.mark.parametrize("scn", [digits_star(), digits_star(**MESH), chain_scenario(n_dev=3),
                                 load_scenario("edge-fmnist")], ids=["star", "mesh", "chain", "edges"])
def test_default_groups_are_the_first_hops_of_the_routes(scn) -> None:
    topo = build_topology(scn)
    ref: dict[str, list[str]] = {}
    fresh = build_topology(scn)
    for n in scn.data_nodes:
        hops = fresh.route(n, fresh.server)
        ref.setdefault(hops[0].dst if hops else n, []).append(n)
    assert topo.default_groups() == ref
    topo.default_groups()["x"] = []  # a copy: the cached groups stay
    assert topo.default_groups() == ref


def test_link_of_names_every_clock_resource() -> None:
    topo = build_topology(load_scenario("edge-fmnist"))
    want = {}
    for name, (a, b, prof) in topo.links.items():
        want[name] = name
        if prof.duplex == "full":
            want[hop_resource(name, a, b, "full")] = want[hop_resource(name, b, a, "full")] = name
    assert {r: topo.link_of[r] for r in want} == want
    assert topo.link_of.get("nope", "d") == "d" and "nope" not in topo.link_of
    with pytest.raises(KeyError):
        topo.link_of["dev0-server server>server"]


def test_profiles_resolved_once_per_name_match_the_in_order_pass() -> None:
    scn = digits_star(**{"nodes": [{"name": "server", "profile": "cloud-server"},
                                   {"name": "dev0", "profile": "phone", "holds_data": True, "flops_per_s": 1e9},
                                   {"name": "dev1", "profile": "phone", "holds_data": True}],
                         "links": [{"between": ["dev0", "server"], "profile": "wifi", "latency_s": 0.5},
                                   {"between": ["dev1", "server"], "profile": "wifi"}]})
    topo = Topology.from_scenario(scn)
    nodes, links = _profiles_in_order(scn)
    assert topo.nodes == nodes and topo.links == links and list(topo.nodes) == list(nodes)
    assert topo.nodes["dev0"].flops_per_s == 1e9 and topo.links["dev0-server"][2].latency_s == 0.5
    bad = digits_star(**{"links": [{"between": ["dev0", "server"], "profile": "wifi"},
                                   {"between": ["server", "dev0"], "profile": "wifi"}]})
    with pytest.raises(UserError, match=r"links\[1\].between: a second link"):
        Topology.from_scenario(bad)
