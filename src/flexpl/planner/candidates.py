"""Plan candidates: every preset at every cut, groupings, sync periods; each as a scenario variant."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flexpl.plan.device_cuts import auto_device_cuts
from flexpl.plan.layout import default_chain
from flexpl.system.topology import Topology

if TYPE_CHECKING:
    from flexpl.config.scenario import Scenario


SYNC_EVERY = (1, 2, 5)



@dataclass(frozen=True)
class Candidate:
    """One plan to cost: a ``strategy`` and a ``plan:`` mapping, i.e. a complete scenario variant."""

    label: str
    strategy: str
    plan: dict[str, Any] | None
    family: str
    cut: str = ""
    grouping: str = ""
    sync_every: int | None = None


def _stage(replication: str, host: str = "own", every: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"replication": replication, "host": host}
    if every is not None:
        out["sync"] = {"kind": "fedavg", "every": every}
    return out


def enumerate_candidates(topo: Topology, n_blocks: int) -> list[Candidate]:
    """Every preset at every cut, the topology's groupings, and FedAvg every 1/2/5 rounds.

    A cut ``c`` keeps blocks ``[0, c)`` on the devices (``c = 0``: they send raw data); the
    last stage always keeps at least one block. Presets stay presets where they can (so
    ``best.yaml`` reads ``strategy: fpl`` + ``plan: {cut: 2}``); variants a preset cannot
    express (another sync period, another grouping, three stages) are explicit ``plan.stages``.
    """
    server = topo.server
    groups = topo.default_groups()
    heads = sorted(groups)
    edges = heads != [server]  # some data nodes reach the server through an intermediate node
    cuts = range(0, n_blocks)
    out = [Candidate("centralized", "centralized", None, "centralized")]
    for k in SYNC_EVERY:
        plan = None if k == 1 else {"name": "fl", "stages": [_stage("per_node", every=k)]}
        out.append(Candidate(f"fl every={k}", "fl", plan, "fl", sync_every=k))
    for c in cuts:
        out.append(Candidate(f"sl cut={c}", "sl", {"cut": c}, "sl", str(c)))
    for c in cuts:
        for k in SYNC_EVERY:
            plan = {"cut": c} if k == 1 else {"name": "sfl", "cut": c, "stages": [
                _stage("per_node", every=k), _stage("per_node", server, every=k)]}
            out.append(Candidate(f"sfl cut={c} every={k}", "sfl", plan, "sfl", str(c), sync_every=k))
    for c in cuts:
        out.append(Candidate(f"mp cut={c}", "mp", {"cut": c}, "mp", str(c), "->".join(default_chain(topo))))
    for c in cuts:
        if len(groups) == 1:
            out.append(Candidate(f"fpl cut={c} trunk@{heads[0]}", "fpl", {"cut": c}, "fpl", str(c), heads[0]))
        else:
            for k in SYNC_EVERY:
                plan = {"cut": c} if k == 1 else {"name": "fpl", "cut": c, "stages": [
                    _stage("per_node"), _stage("per_group", every=k)]}
                out.append(Candidate(f"fpl cut={c} trunk@edges every={k}", "fpl", plan, "fpl", str(c), "edges",
                                     sync_every=k))
        if edges:  # one trunk for everybody, on the server
            out.append(Candidate(f"fpl cut={c} trunk@{server}", "fpl", {"name": "fpl", "cut": c, "stages": [
                _stage("per_node"), _stage("single", server)]}, "fpl", str(c), server))
    for c in cuts:  # fronts averaged at the server every round (the fpl-sync preset)
        where = heads[0] if len(groups) == 1 else "edges"
        out.append(Candidate(f"fpl-sync cut={c} trunk@{where}", "fpl-sync", {"cut": c}, "fpl-sync", str(c), where))
        if edges:  # fronts averaged at their edge (the fpl-group preset); with no edges it is fpl-sync
            out.append(Candidate(f"fpl-group cut={c} trunk@{where}", "fpl-group", {"cut": c}, "fpl-group", str(c),
                                 where))

    for c in cuts:  # weak devices keep a smaller front (the fpl-devcut presets), where some device is weak
        if auto_device_cuts(topo, c):
            where = heads[0] if len(groups) == 1 else "edges"
            for fam in ("fpl-devcut", "fpl-sync-devcut"):
                out.append(Candidate(f"{fam} cut={c} trunk@{where}", fam, {"cut": c}, fam, str(c), where))
        if c >= 2:  # each device's cut chosen by its energy (the fpl-ecut presets; the planner's model costs)
            where = heads[0] if len(groups) == 1 else "edges"
            for fam in ("fpl-ecut", "fpl-sync-ecut"):
                out.append(Candidate(f"{fam} cut={c} trunk@{where}", fam, {"cut": c}, fam, str(c), where))
    for c in cuts:
        out.append(Candidate(f"fpl-features cut={c}", "fpl-features", {"cut": c}, "fpl-features", str(c), server))
    if edges:  # three stages: device front, middle on the edge heads, tail on the server
        busiest = default_chain(topo)[0]
        for c1 in cuts:
            for c2 in range(c1 + 1, n_blocks):
                tail = _stage("single", server)
                cut = f"{c1},{c2}"
                if len(groups) > 1:
                    for k in SYNC_EVERY:
                        out.append(Candidate(f"fpl3 cut={cut} middle@edges every={k}", "fpl", {
                            "name": "fpl3", "cut": [c1, c2],
                            "stages": [_stage("per_node"), _stage("per_group", every=k), tail]},
                            "fpl3", cut, "edges", sync_every=k))
                out.append(Candidate(f"fpl3 cut={cut} middle@{busiest}", "fpl", {
                    "name": "fpl3", "cut": [c1, c2],
                    "stages": [_stage("per_node"), _stage("single", busiest), tail]}, "fpl3", cut, busiest))
    return out


def candidate_data(scn: Scenario, cand: Candidate) -> dict[str, Any]:
    """The candidate as a complete scenario mapping (the base scenario with its strategy and plan)."""
    data = scn.resolved()
    data["strategy"] = cand.strategy
    data["plan"] = copy.deepcopy(cand.plan)
    return data
