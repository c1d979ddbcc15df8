"""Plans: cut a block model into stages, place their replicas, and say how they sync.

A plan is data. Every classic strategy is a short preset function that returns one
(see ``PRESETS``); the engine runs any plan with the same loop.

- replication: ``per_node`` (one replica per data node), ``per_group`` (one per group of
  data nodes, e.g. per edge server) or ``single``;
- host: ``own`` (each replica on its data node or group head) or a node name; a ``per_node``
  stage may host some data nodes' replicas elsewhere (``hosts``: a weak device's piece of
  the front on its edge server, see ``flexpl.plan.device_cuts``);
- sync: ``none``, ``fedavg`` every k rounds/steps at an aggregator, or ``relay``
  (split learning: weights handed from one client to the next);
- junction: where replicas feed a stage with fewer replicas, merge by ``batch``
  (stack samples) or by ``features`` (concatenate along dimension 1; each branch sees
  its own patch of the same sample).
- schedule: ``lockstep`` (all data nodes step together), ``sequential`` (one data node
  after another, each all its local steps: vanilla split learning) or ``round_robin``
  (one data node's batch per step, nodes taking turns: model parallelism).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from flexpl.errors import UserError
from flexpl.plan.device_cuts import (
    auto_device_cuts,
    device_cuts_of,
    energy_device_cuts,
    front_count,
    with_device_cuts,
)
from flexpl.plan.spec import Layout, Plan, Replica, Stage, Sync
from flexpl.system.topology import Topology

REPLICATIONS = ("per_node", "per_group", "single")
SYNCS = ("none", "fedavg", "relay")
JUNCTIONS = ("batch", "features")
SCHEDULES = ("lockstep", "sequential", "round_robin")
SYNC_SCOPES = ("all", "group")


# ---------------------------------------------------------------- presets


def _cut(cuts: list[int], default: int) -> int:
    return cuts[0] if cuts else default


def centralized(topo: Topology, n_blocks: int, cuts: list[int], default_cut: int) -> Plan:
    """All data uploaded once to the server, which trains the whole model."""
    return Plan("centralized", (Stage(0, n_blocks, "single", topo.server),), collect_data=True)


def fl(topo: Topology, n_blocks: int, cuts: list[int], default_cut: int) -> Plan:
    """FedAvg (McMahan et al., AISTATS 2017): whole model per device, averaged at the server every round."""
    return Plan("fl", (Stage(0, n_blocks, "per_node", "own", Sync("fedavg")),))


def sl(topo: Topology, n_blocks: int, cuts: list[int], default_cut: int) -> Plan:
    """Vanilla split learning (Gupta & Raskar 2018): fronts relayed client to client, one back on the server."""
    c = _cut(cuts, default_cut)
    return Plan("sl", (Stage(0, c, "per_node", "own", Sync("relay")),
                       Stage(c, n_blocks, "single", topo.server)), schedule="sequential")


def sfl(topo: Topology, n_blocks: int, cuts: list[int], default_cut: int) -> Plan:
    """SplitFed v1 (Thapa et al., AAAI 2022): per-client fronts and server-side backs, both averaged."""
    c = _cut(cuts, default_cut)
    return Plan("sfl", (Stage(0, c, "per_node", "own", Sync("fedavg")),
                        Stage(c, n_blocks, "per_node", topo.server, Sync("fedavg"))))


def mp(topo: Topology, n_blocks: int, cuts: list[int], default_cut: int) -> Plan:
    """Model parallelism over a chain (edge server -> server); data nodes stream raw batches in turn."""
    chain = default_chain(topo)
    if not cuts:
        cuts = [default_cut] if len(chain) > 1 else []
    chain = chain[-(len(cuts) + 1):] if len(cuts) + 1 <= len(chain) else [topo.server] * (len(cuts) + 1)
    bounds = [0, *cuts, n_blocks]
    stages = tuple(Stage(bounds[i], bounds[i + 1], "single", chain[i]) for i in range(len(chain)))
    return Plan("mp", stages, schedule="round_robin")


def fpl(topo: Topology, n_blocks: int, cuts: list[int], default_cut: int) -> Plan:
    """Flexible parallel learning (Malandrino & Chiasserini 2022): per-device fronts, batch junction at the edge.

    One group: a single trunk on the group head. Several groups (edge servers): one trunk
    per group, averaged at the server every round.
    """
    c = _cut(cuts, default_cut)
    groups = topo.default_groups()
    if len(groups) == 1:
        trunk = Stage(c, n_blocks, "single", next(iter(groups)))
    else:
        trunk = Stage(c, n_blocks, "per_group", "own", Sync("fedavg"))
    return Plan("fpl", (Stage(0, c, "per_node", "own"), trunk),
                groups={h: tuple(m) for h, m in groups.items()})


def fpl_features(topo: Topology, n_blocks: int, cuts: list[int], default_cut: int) -> Plan:
    """FPL with a feature junction: each device sees its own patch of every sample; the server joins them."""
    c = _cut(cuts, default_cut)
    return Plan("fpl-features", (Stage(0, c, "per_node", "own"), Stage(c, n_blocks, "single", topo.server)),
                junction="features")


def fpl_sync(topo: Topology, n_blocks: int, cuts: list[int], default_cut: int) -> Plan:
    """FPL with the device fronts averaged at the server every round (``plan.front_sync: all``).

    Under label skew a front that is never averaged only ever sees its device's few classes;
    averaging the fronts (and, with several groups, the edge trunks, as ``fpl`` already does)
    at the cloud every round lets every front learn from every class. Costs one front upload
    and download per device per round on top of ``fpl``'s activations.
    """
    return with_front_sync(fpl(topo, n_blocks, cuts, default_cut), "all", 1, "fpl-sync")


def fpl_group(topo: Topology, n_blocks: int, cuts: list[int], default_cut: int) -> Plan:
    """FPL with the device fronts averaged within their group, at the group head (``plan.front_sync: group``).

    Behind edge servers the fronts' weights travel only to their edge and back, never to the
    cloud; fronts in different groups stay apart (the edge trunks are averaged at the cloud, as
    in ``fpl``). With one group this is ``fpl-sync`` with the group head as aggregator.
    """
    return with_front_sync(fpl(topo, n_blocks, cuts, default_cut), "group", 1, "fpl-group")


def fpl_devcut(topo: Topology, n_blocks: int, cuts: list[int], default_cut: int) -> Plan:
    """FPL with the cut chosen per device: a weak device keeps a smaller front (``plan.device_cuts``).

    Devices whose compute (``flops_per_s``) is below the median of the data nodes' cut at half the
    plan's cut (at least 1); their edge server (the host of their trunk) computes the rest of their
    front, so they compute fewer layers and send the activation of their smaller cut.
    """
    plan = fpl(topo, n_blocks, cuts, default_cut)
    return with_device_cuts(replace(plan, name="fpl-devcut"), auto_device_cuts(topo, plan.stages[0].end), topo)


def fpl_sync_devcut(topo: Topology, n_blocks: int, cuts: list[int], default_cut: int) -> Plan:
    """``fpl-sync`` with ``fpl-devcut``'s per-device cuts: every piece of the front averaged at the cloud."""
    plan = fpl_sync(topo, n_blocks, cuts, default_cut)
    return with_device_cuts(replace(plan, name="fpl-sync-devcut"), auto_device_cuts(topo, plan.stages[0].end), topo)


def fpl_ecut(topo: Topology, n_blocks: int, cuts: list[int], default_cut: int) -> Plan:
    """FPL with each device's cut chosen by its own energy (``flexpl.plan.device_cuts.energy_device_cuts``).

    A device cuts where computing the front costs it least against sending the activation over its
    link; ``build_plan`` picks the cuts from the model's costs (without them the plan is ``fpl``'s).
    """
    return replace(fpl(topo, n_blocks, cuts, default_cut), name="fpl-ecut")


def fpl_sync_ecut(topo: Topology, n_blocks: int, cuts: list[int], default_cut: int) -> Plan:
    """``fpl-sync`` with ``fpl-ecut``'s per-device cuts (every piece of the front averaged at the cloud)."""
    return replace(fpl_sync(topo, n_blocks, cuts, default_cut), name="fpl-sync-ecut")


PresetFn = Callable[[Topology, int, list[int], int], Plan]
PRESETS: dict[str, PresetFn] = {
    "centralized": centralized, "fl": fl, "sl": sl, "sfl": sfl, "mp": mp, "fpl": fpl,
    "fpl-features": fpl_features,
    "fpl-sync": fpl_sync, "fpl-group": fpl_group,
    "fpl-devcut": fpl_devcut, "fpl-sync-devcut": fpl_sync_devcut,
    "fpl-ecut": fpl_ecut, "fpl-sync-ecut": fpl_sync_ecut,
}

FRONT_SYNCS = ("none", "group", "all")


def with_front_sync(plan: Plan, scope: str, every: int = 1, name: str | None = None) -> Plan:
    """``plan`` with its device fronts (stage 0, ``per_node``) averaged ``scope``-wide every ``every`` rounds.

    ``scope``: ``none`` (never averaged, as ``fpl``), ``all`` (FedAvg at the server) or ``group``
    (FedAvg of the fronts of each group's devices at the group's head, e.g. their edge server).
    """
    if scope not in FRONT_SYNCS:
        raise UserError(f"plan.front_sync: unknown '{scope}'; allowed: {', '.join(FRONT_SYNCS)}")
    if len(plan.stages) < 2 or plan.stages[0].replication != "per_node" or plan.stages[0].sync.kind == "relay":
        raise UserError(f"plan.front_sync: plan '{plan.name}' has no per-device front to sync; "
                        "front_sync applies to FPL-style plans (fpl, fpl-sync, fpl-features)")
    sync = Sync("fedavg", every, scope=scope) if scope != "none" else Sync()
    k = max(1, front_count(plan))  # every piece of a front cut per device (plan.device_cuts)
    fronts = tuple(replace(st, sync=sync) for st in plan.stages[:k])
    return replace(plan, name=name or plan.name, stages=(*fronts, *plan.stages[k:]))


def with_trunk_sync_every(plan: Plan, every: int) -> Plan:
    """``plan`` with every FedAvg stage after the fronts (the edge trunks) averaged every ``every`` rounds."""
    if not any(st.sync.kind == "fedavg" for st in plan.stages[max(1, front_count(plan)):]):
        raise UserError(f"plan.trunk_sync_every: plan '{plan.name}' has no averaged trunk (a single trunk "
                        "needs no averaging); it applies to FPL plans whose trunks sit on several edges")
    k = max(1, front_count(plan))
    stages = [*plan.stages[:k], *(replace(st, sync=replace(st.sync, every=every)) if st.sync.kind == "fedavg"
                                  else st for st in plan.stages[k:])]
    return replace(plan, stages=tuple(stages))


def default_chain(topo: Topology) -> list[str]:
    """Chain for model parallelism: the busiest intermediate node on the way to the server, then the server."""
    heads = topo.default_groups()
    inner = sorted((h for h in heads if h != topo.server), key=lambda h: (-len(heads[h]), h))
    return [inner[0], topo.server] if inner else [topo.server]


# ---------------------------------------------------------------- building and placing


def build_plan(strategy: str | None, plan_cfg: dict | None, topo: Topology, n_blocks: int,
               default_cut: int, front: Callable[[int], tuple[int, int]] | None = None) -> Plan:
    """Make the plan of a scenario: a preset (optionally with ``cut``/``junction`` overrides) or explicit stages.

    ``front``: the model's per-sample front costs (``flexpl.plan.device_cuts.front_costs``), which the
    ``fpl-ecut`` presets choose each device's cut from.
    """
    cfg = dict(plan_cfg or {})
    raw_cut = cfg.get("cut")
    cuts = [] if raw_cut is None else ([raw_cut] if isinstance(raw_cut, int) else list(raw_cut))
    for c in cuts:
        if not isinstance(c, int) or not 0 <= c <= n_blocks:
            raise UserError(f"plan.cut: cut {c!r} out of range; the model has {n_blocks} blocks, "
                            f"so a cut is an integer from 0 to {n_blocks}")
    if sorted(cuts) != cuts:
        raise UserError(f"plan.cut: cuts must be increasing, got {cuts}")
    if cfg.get("stages"):
        for key in ("front_sync", "front_sync_every", "trunk_sync_every", "device_cuts"):
            if cfg.get(key) is not None:
                raise UserError(f"plan.{key}: applies to a preset; with plan.stages set each stage's sync instead")
        plan = _explicit_plan(cfg, cuts, topo, n_blocks, default_cut)
    else:
        if strategy not in PRESETS:
            raise UserError(f"strategy: unknown strategy '{strategy}'; allowed: {', '.join(PRESETS)} "
                            "(or give plan.stages)")
        plan = PRESETS[strategy](topo, n_blocks, cuts, default_cut)
        if len(cuts) > 1 and strategy != "mp":
            raise UserError(f"plan.cut: preset '{strategy}' takes one cut; give plan.stages for more stages")
        for key in ("junction", "schedule"):
            if cfg.get(key) is not None:
                plan = replace(plan, **{key: cfg[key]})
        if cfg.get("groups"):
            plan = replace(plan, groups={h: tuple(m) for h, m in cfg["groups"].items()})
        if cfg.get("front_sync") is not None or cfg.get("front_sync_every") is not None:
            every = int(cfg.get("front_sync_every") or 1)
            scope = cfg.get("front_sync")
            if scope is None:  # only the period given: keep the preset's scope
                scope = plan.stages[0].sync.scope if plan.stages[0].sync.kind == "fedavg" else "none"
                if scope == "none":
                    raise UserError("plan.front_sync_every: the fronts of this plan are never averaged; "
                                    "set plan.front_sync: all as well")
            plan = with_front_sync(plan, scope, every)
        if cfg.get("trunk_sync_every") is not None:
            plan = with_trunk_sync_every(plan, int(cfg["trunk_sync_every"]))
        if strategy in ("fpl-ecut", "fpl-sync-ecut") and front is not None:
            plan = with_device_cuts(plan, energy_device_cuts(topo, plan.stages[0].end, front), topo)
        elif strategy in ("fpl-devcut", "fpl-sync-devcut") and getattr(front, "allowed", None) is not None:
            # the preset chose without the model: again, among the cuts it allows
            c = plan.stages[front_count(plan) - 1].end
            plan = with_device_cuts(plan, auto_device_cuts(topo, c, front.allowed), topo)
        if cfg.get("device_cuts") is not None or len(plan.stages) > 1 and any(st.hosts for st in plan.stages):
            # (re)placed on the plan's final groups: the rest of a smaller front goes to its trunk's host
            plan = with_device_cuts(plan, {**device_cuts_of(plan), **(cfg.get("device_cuts") or {})}, topo)
        periods = {st.sync.every for st in plan.stages if st.sync.kind == "fedavg" and st.sync.unit == "round"}
        if len(periods) > 1 and (cfg.get("front_sync_every") or cfg.get("trunk_sync_every")):
            # the simulator averages all round-synced stages in the same rounds (every max(k) rounds)
            raise UserError(f"plan.front_sync_every: fronts and trunks would be averaged every "
                            f"{' and '.join(map(str, sorted(periods)))} rounds, but all averaged stages sync "
                            "in the same rounds; set plan.front_sync_every and plan.trunk_sync_every equal")
    validate_plan(plan, topo, n_blocks)
    return plan


def _explicit_plan(cfg: dict, cuts: list[int], topo: Topology, n_blocks: int, default_cut: int) -> Plan:
    stages_cfg = cfg["stages"]
    n = len(stages_cfg)
    if not cuts:
        cuts = [default_cut] if n == 2 else []
    if len(cuts) != n - 1:
        raise UserError(f"plan.cut: {n} stages need {n - 1} cut(s), got {len(cuts)}; "
                        "set plan.cut to a list of block indices")
    bounds = [0, *cuts, n_blocks]
    stages = []
    for i, s in enumerate(stages_cfg):
        sync = s.get("sync") or {}
        if isinstance(sync, str):
            sync = {"kind": sync}
        stages.append(Stage(bounds[i], bounds[i + 1], s.get("replication", "single"), s.get("host", "own"),
                            Sync(sync.get("kind", "none"), int(sync.get("every", 1)),
                                 sync.get("unit", "round"), sync.get("at"), sync.get("scope", "all")),
                            tuple(sorted((s.get("hosts") or {}).items()))))
    groups = cfg.get("groups")
    return Plan(cfg.get("name") or "custom", tuple(stages), cfg.get("junction") or "batch",
                cfg.get("schedule") or "lockstep", bool(cfg.get("collect_data", False)),
                {h: tuple(m) for h, m in groups.items()} if groups else None)


def validate_plan(plan: Plan, topo: Topology, n_blocks: int) -> None:
    """Reject plans that cannot run, with one line naming the field."""
    if plan.junction not in JUNCTIONS:
        raise UserError(f"plan.junction: unknown junction '{plan.junction}'; allowed: {', '.join(JUNCTIONS)}")
    if plan.schedule not in SCHEDULES:
        raise UserError(f"plan.schedule: unknown schedule '{plan.schedule}'; allowed: {', '.join(SCHEDULES)}")
    for i, st in enumerate(plan.stages):
        f = f"plan.stages[{i}]"
        if st.replication not in REPLICATIONS:
            raise UserError(f"{f}.replication: unknown '{st.replication}'; allowed: {', '.join(REPLICATIONS)}")
        if st.sync.kind not in SYNCS:
            raise UserError(f"{f}.sync.kind: unknown '{st.sync.kind}'; allowed: {', '.join(SYNCS)}")
        if st.sync.unit not in ("round", "step"):
            raise UserError(f"{f}.sync.unit: unknown '{st.sync.unit}'; allowed: round, step")
        if st.sync.every < 1:
            raise UserError(f"{f}.sync.every: must be a positive integer, got {st.sync.every}")
        if st.sync.scope not in SYNC_SCOPES:
            raise UserError(f"{f}.sync.scope: unknown '{st.sync.scope}'; allowed: {', '.join(SYNC_SCOPES)}")
        if st.sync.scope == "group" and (st.sync.kind != "fedavg" or st.replication != "per_node"
                                         or st.sync.at is not None):
            raise UserError(f"{f}.sync.scope: 'group' averages a per_node stage with fedavg at each group's "
                            "head; it takes no sync.at")
        if st.host != "own" and st.host not in topo.nodes:
            raise UserError(f"{f}.host: node '{st.host}' does not exist; allowed: own, {', '.join(topo.nodes)}")
        if st.replication == "single" and st.host == "own" and not plan.collect_data:
            raise UserError(f"{f}.host: a single stage needs a named host node, not 'own'")
        if st.hosts and st.replication != "per_node":
            raise UserError(f"{f}.hosts: only a per_node stage hosts data nodes' replicas apart; "
                            f"this stage is {st.replication}")
        for node, host in st.hosts:
            if node not in topo.data_nodes:
                raise UserError(f"{f}.hosts: '{node}' is not a data node; data nodes are {', '.join(topo.data_nodes)}")
            if host not in topo.nodes:
                raise UserError(f"{f}.hosts.{node}: node '{host}' does not exist; allowed: {', '.join(topo.nodes)}")
        if st.hosts and st.sync.kind == "relay":
            raise UserError(f"{f}.hosts: a relayed stage passes its weights device to device; give it no hosts")
        if st.sync.at is not None and st.sync.at not in topo.nodes:
            raise UserError(f"{f}.sync.at: node '{st.sync.at}' does not exist; allowed: {', '.join(topo.nodes)}")
        if st.sync.kind == "relay" and (plan.schedule != "sequential" or st.replication != "per_node"):
            raise UserError(f"{f}.sync: relay needs a per_node stage and plan.schedule 'sequential'")
        if st.sync.kind != "none" and st.replication == "single":
            raise UserError(f"{f}.sync: a single stage has nothing to sync; use sync 'none'")
        if st.start > st.end or (st.start == st.end and i == len(plan.stages) - 1):
            raise UserError(f"plan.cut: stage {i} would hold no blocks (blocks {st.start}..{st.end}); "
                            "the last stage needs at least one block")
    if plan.stages[-1].end != n_blocks or plan.stages[0].start != 0:
        raise UserError("plan.cut: stages must cover every block of the model")
    if plan.groups:
        covered = [m for ms in plan.groups.values() for m in ms]
        if sorted(covered) != sorted(topo.data_nodes):
            raise UserError("plan.groups: every data node must be in exactly one group; "
                            f"data nodes are {', '.join(topo.data_nodes)}")
        for h in plan.groups:
            if h not in topo.nodes:
                raise UserError(f"plan.groups: group head '{h}' is not a node; allowed: {', '.join(topo.nodes)}")
    for i in range(1, len(plan.stages)):
        if plan.stages[i].start == plan.stages[i].end and plan.junction == "features":
            raise UserError(f"plan.cut: with a features junction, stage {i} must hold at least one block")


def place(plan: Plan, topo: Topology, data_nodes: list[str]) -> Layout:
    """Create the replicas of every stage and map each data node to the replica that serves it."""
    groups = plan.groups or {h: tuple(m) for h, m in topo.default_groups().items()}
    replicas: list[list[Replica]] = []
    serves: list[dict[str, int]] = []
    aggregators: list[str | None] = []
    agg_of: list[dict[int, str]] = []
    head_of = {m: h for h, ms in groups.items() for m in ms} if any(
        st.sync.scope == "group" for st in plan.stages) else {}
    connected = topo.connected()
    for s, st in enumerate(plan.stages):
        if st.replication == "per_node" and st.host == "own" and not st.hosts:  # (the common case, one pass)
            reps = [Replica(s, i, n, (n,)) for i, n in enumerate(data_nodes)]
        elif st.replication == "per_node":
            sets = [(n, (n,)) for n in data_nodes]
        elif st.replication == "per_group":
            held = set(data_nodes)
            sets = [(h, tuple(m for m in ms if m in held)) for h, ms in groups.items()]
            sets = [x for x in sets if x[1]]
        else:
            sets = [(st.host if st.host != "own" else data_nodes[0], tuple(data_nodes))]
        if not (st.replication == "per_node" and st.host == "own" and not st.hosts):
            moved = dict(st.hosts) if st.replication == "per_node" else {}  # data nodes whose replica lives elsewhere
            reps = [Replica(s, i, moved.get(members[0], st.host if st.host != "own" else own), members)
                    for i, (own, members) in enumerate(sets)]
        replicas.append(reps)
        serves.append(dict(zip(data_nodes, range(len(reps)))) if st.replication == "per_node" else
                      {m: r.index for r in reps for m in r.members})
        agg = (st.sync.at or topo.server) if st.sync.kind == "fedavg" else None
        if agg is not None and st.sync.scope == "group":  # each replica averaged at its group's head
            agg_of.append({r.index: head_of[r.members[0]] for r in reps})
            agg = None
        else:
            agg_of.append(dict.fromkeys(range(len(reps)), agg) if agg is not None else {})
        aggregators.append(agg)
        for r in reps if not connected else ():  # every replica must reach the previous stage and its aggregator
            agg = agg_of[s].get(r.index)
            if agg is not None and agg not in topo.reachable(r.host):
                raise UserError(f"plan.stages[{s}].sync.at: aggregator '{agg}' is unreachable from "
                                f"'{r.host}' through the links")
    for node in data_nodes if not connected else ():  # (a connected topology: every node reaches every node)
        reach = topo.reachable(node)
        for s in range(len(plan.stages)):
            host = replicas[s][serves[s][node]].host
            if host not in reach:
                raise UserError(f"plan.stages[{s}].host: node '{host}' is unreachable from data node "
                                f"'{node}' through the links")
    return Layout(plan, replicas, serves, aggregators, agg_of)
