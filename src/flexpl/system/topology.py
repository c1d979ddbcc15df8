"""Nodes, links and routes of a scenario: who talks to whom, over which links."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flexpl.errors import UserError
from flexpl.system.profiles import DeviceProfile, LinkProfile, device_profile, link_profile

if TYPE_CHECKING:
    from flexpl.config.scenario import Scenario


@dataclass(frozen=True)
class Hop:
    """One link crossed in one direction."""

    link: str
    src: str
    dst: str
    bandwidth_bps: float
    latency_s: float
    tx_j_per_bit: float
    rx_j_per_bit: float
    resource: str = ""  # what the clock queues on: the link (half duplex) or its direction (full duplex)


def hop_resource(link: str, src: str, dst: str, duplex: str) -> str:
    """The clock resource of a hop over ``link`` from ``src`` to ``dst``.

    A half-duplex link is one resource (both directions queue on it); a full-duplex link
    is one resource per direction, named ``"<link> <src>><dst>"``.
    """
    return link if duplex == "half" else f"{link} {src}>{dst}"


class LinkOf(dict):
    """Clock resource -> link name (:func:`hop_resource`), worked out when first asked (no pass over every link).

    A half-duplex link's resource is its name; a full-duplex link's is ``"<a>-<b> <src>><dst>"``,
    twice as long as its name plus one, so the name is the first half.
    """

    def __init__(self, links: dict[str, tuple[str, str, LinkProfile]]) -> None:
        super().__init__()
        self._links = links

    def _find(self, resource: str) -> str | None:
        if resource in self._links:
            return resource
        name = resource[: (len(resource) - 1) // 2]
        if name in self._links:
            a, b, prof = self._links[name]
            if prof.duplex == "full" and resource in (hop_resource(name, a, b, "full"), hop_resource(name, b, a, "full")):
                return name
        return None

    def __missing__(self, resource: str) -> str:
        name = self._find(resource)
        if name is None:
            raise KeyError(resource)
        self[resource] = name
        return name

    def get(self, resource: str, default: Any = None) -> Any:  # type: ignore[override]
        """The link of ``resource``, else ``default``."""
        try:
            return self[resource]
        except KeyError:
            return default

    def __contains__(self, resource: object) -> bool:
        return isinstance(resource, str) and self.get(resource) is not None


@dataclass
class Topology:
    """The scenario's graph: node profiles, link profiles and shortest routes between nodes."""

    nodes: dict[str, DeviceProfile]
    links: dict[str, tuple[str, str, LinkProfile]]
    data_nodes: list[str]
    server: str
    _adj: dict[str, list[tuple[str, str]]] = field(default_factory=dict, repr=False)
    _routes: dict[tuple[str, str], tuple[Hop, ...]] = field(default_factory=dict, repr=False)
    link_of: dict[str, str] = field(default_factory=dict, repr=False)  # clock resource -> link name (LinkOf)
    # [Note: route trees] a source asked for a second route gets its whole BFS tree once (O(nodes)),
    # instead of a BFS per destination (O(nodes^2) for a server talking to every client)
    _trees: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict, repr=False)
    _asked: set[str] = field(default_factory=set, repr=False)
    _component: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)
    _groups: dict[str, list[str]] | None = field(default=None, repr=False)  # default_groups, made once

    def __post_init__(self) -> None:
        self._adj = adj = {n: [] for n in self.nodes}
        for name, (a, b, _) in self.links.items():
            adj[a].append((b, name))
            adj[b].append((a, name))
        for out in adj.values():
            if len(out) > 1:
                out.sort()
        self.link_of = LinkOf(self.links)

    @classmethod
    def from_scenario(cls, scn: Scenario) -> Topology:
        """The scenario's topology: every node's and link's profile, resolved with its inline overrides.

        A second link between the same two nodes, an unknown profile, or a data node that
        cannot reach the server is a ``UserError`` naming the field.
        """
        nodes, links = _profiles_fast(scn) or _profiles_in_order(scn)
        data_nodes = scn.data_nodes
        topo = cls(nodes, links, data_nodes, scn.server_name)
        reach = topo.reachable(topo.server)
        for n in data_nodes if not reach.issuperset(data_nodes) else ():
            if n not in reach:
                raise UserError(f"links: data node '{n}' cannot reach the server '{topo.server}'; add a link")
        return topo

    def route(self, src: str, dst: str) -> tuple[Hop, ...]:
        """Fewest-hop route from ``src`` to ``dst`` (ties broken by node name); empty if equal."""
        key = (src, dst)
        if key in self._routes:
            return self._routes[key]
        if src == dst:
            return ()
        if src in self._trees:
            prev = self._trees[src]
            seen: set[str] | dict[str, tuple[str, str]] = prev
        elif src in self._asked:
            prev = seen = self._tree(src)
        else:
            # the same BFS either way: each node's predecessor is fixed when it is first seen, so
            # stopping at ``dst`` or running to the end gives ``dst`` the same route
            self._asked.add(src)
            prev, seen = self._bfs(src, dst)
        if dst not in seen:
            raise UserError(f"links: no route from node '{src}' to node '{dst}'; add a link that connects them")
        hops: list[Hop] = []
        v = dst
        while v != src:
            u, link = prev[v]
            a, _b, prof = self.links[link]
            up = u == a
            hops.append(Hop(link, u, v, prof.bandwidth_up_bps if up else prof.bandwidth_down_bps,
                            prof.latency_s, prof.tx_j_per_bit, prof.rx_j_per_bit,
                            hop_resource(link, u, v, prof.duplex)))
            v = u
        self._routes[key] = tuple(reversed(hops))
        return self._routes[key]

    def _bfs(self, src: str, dst: str | None) -> tuple[dict[str, tuple[str, str]], Collection[str]]:
        """Breadth-first search from ``src`` (neighbours in name order), stopping when ``dst`` is reached;
        each node's predecessor and link, and the nodes seen."""
        prev: dict[str, tuple[str, str]] = {src: (src, "")}  # (src: seen, removed below)
        adj, queue = self._adj, deque([src])
        pop, push = queue.popleft, queue.append
        while queue:
            u = pop()
            if u == dst:
                break
            for v, link in adj[u]:
                if v not in prev:
                    prev[v] = (u, link)
                    push(v)
        del prev[src]
        return prev, prev  # (as "seen": every node but src, which callers never ask about)

    def _tree(self, src: str) -> dict[str, tuple[str, str]]:
        """``src``'s whole BFS tree (each reachable node's predecessor and link), computed once [Note: route trees]."""
        if src not in self._trees:
            self._asked.add(src)
            self._trees[src] = self._bfs(src, None)[0]
        return self._trees[src]

    def reachable(self, src: str) -> frozenset[str]:
        """Nodes reachable from ``src`` through the links (links are undirected: ``src``'s component).

        Computed once per component and shared by its nodes; do not modify the returned set.
        """
        if src not in self._component:
            comp = frozenset(self._tree(src)) | {src}  # (its BFS tree: kept for routes and default groups)
            self._component.update(dict.fromkeys(comp, comp))
        return self._component[src]

    def first_hop_head(self, node: str) -> str:
        """The node after ``node`` on its route to the server (its group head); the server itself if direct."""
        hops = self.route(node, self.server)
        return hops[0].dst if hops else node

    def connected(self) -> bool:
        """Whether every node can reach every other node through the links."""
        return len(self.reachable(self.server)) == len(self.nodes)

    def default_groups(self) -> dict[str, list[str]]:
        """Data nodes grouped by the first node on their way to the server (e.g. their edge server)."""
        if self._groups is None:
            groups: dict[str, list[str]] = {}
            if len(self.links) == len(self.nodes) - 1 and self.connected():
                # a tree (a star, edge servers ...): one route per node, so a node's first hop is its
                # parent in the server's BFS tree; one search instead of one per data node
                parent, server = self._tree(self.server), self.server
                heads = [parent[n][0] if n != server else n for n in self.data_nodes]
                if heads and heads.count(heads[0]) == len(heads):  # one group (a star): no pass per node
                    groups[heads[0]] = list(self.data_nodes)
                else:
                    for h, n in zip(heads, self.data_nodes):
                        groups.setdefault(h, []).append(n)
            else:
                for n in self.data_nodes:
                    groups.setdefault(self.first_hop_head(n), []).append(n)
            self._groups = groups
        return {h: list(m) for h, m in self._groups.items()}


def _profiles_in_order(scn: Scenario) -> tuple[dict[str, DeviceProfile], dict[str, tuple[str, str, LinkProfile]]]:
    """Every node's and link's profile, in scenario order: the first bad entry raises its ``UserError``."""
    # many nodes share a profile without overrides: resolved once, shared (profiles are not modified)
    plain: dict[tuple[str, Any], Any] = {}

    def resolve(kind: str, profile: Any, over: dict[str, Any], field: str) -> Any:
        key = (kind, profile) if not over and isinstance(profile, str) else None
        if key is not None and key in plain:
            return plain[key]
        find = device_profile if kind == "device" else link_profile
        find(profile, field=f"{field}.profile")  # the name first, so its error names .profile
        prof = find(profile, over, field=field)
        if key is not None:
            plain[key] = prof
        return prof

    nodes = {n.name: plain.get(("device", n.profile)) or resolve("device", n.profile, {}, f"nodes[{i}]")
             if not n.__pydantic_extra__ else resolve("device", n.profile, n.overrides(), f"nodes[{i}]")
             for i, n in enumerate(scn.nodes)}
    links = {}
    for i, ln in enumerate(scn.links):
        a, b = ln.between
        name = f"{a}-{b}"
        if name in links or f"{b}-{a}" in links:
            raise UserError(f"links[{i}].between: a second link between '{a}' and '{b}'; keep one")
        links[name] = (a, b, plain.get(("link", ln.profile)) or resolve("link", ln.profile, {}, f"links[{i}]")
                       if not ln.__pydantic_extra__ else resolve("link", ln.profile, ln.overrides(), f"links[{i}]"))
    return nodes, links


def _profiles_fast(scn: Scenario) -> tuple[dict[str, DeviceProfile], dict[str, tuple[str, str, LinkProfile]]] | None:
    """:func:`_profiles_in_order` in one pass over the nodes and one over the links: one resolution per
    profile name, one per entry with inline fields. None if anything is wrong (the in-order pass then
    names the first problem)."""
    try:
        dev: dict[Any, DeviceProfile] = {}
        nodes: dict[str, DeviceProfile] = {}
        for n in scn.nodes:
            if n.__pydantic_extra__:  # (inline fields read directly: ``overrides()`` copies them)
                nodes[n.name] = device_profile(n.profile, n.overrides())
            elif (prof := dev.get(n.profile)) is not None:
                nodes[n.name] = prof
            else:
                nodes[n.name] = dev[n.profile] = device_profile(n.profile)
        lnk: dict[Any, LinkProfile] = {}
        links: dict[str, tuple[str, str, LinkProfile]] = {}
        for ln in scn.links:
            a, b = ln.between
            if ln.__pydantic_extra__:
                lp = link_profile(ln.profile, ln.overrides())
            elif (lp := lnk.get(ln.profile)) is None:
                lp = lnk[ln.profile] = link_profile(ln.profile)
            links[f"{a}-{b}"] = (a, b, lp)
        if len(links) != len(scn.links) or any(f"{b}-{a}" in links for a, b, _ in links.values()):
            return None  # a second link between two nodes (or a name that reads like one): the in-order pass decides
    except UserError:
        return None
    return nodes, links
