"""The cut chosen per device (``plan.device_cuts``): a weak device keeps a smaller front.

FPL cuts every device's model at one block, the plan's cut ``c``. With per-device cuts, a
device ``n`` with cut ``d_n < c`` computes only blocks ``[0, d_n)`` and sends the activation
at ``d_n``; the host of its trunk (its edge server, where the fronts meet) computes blocks
``[d_n, c)`` of its front for it, on a replica of its own, as SplitFed's server keeps one
back per client. The front becomes consecutive ``per_node`` stages, one per distinct cut:
``[b_i, b_{i+1})`` for the sorted cuts ``0 = b_0 < b_1 < ... < c``; in each piece, the
devices whose cut is below the piece's end have their replica hosted at their trunk
(``Stage.hosts``). Front sync averages every piece across all its replicas, wherever they
live. Blocks past ``c`` (the trunk) are unchanged.

Two rules choose the cuts: ``fpl-devcut`` by compute (devices below the median FLOP/s keep
half the front) and ``fpl-ecut`` by each device's own energy per sample (compute against
radio: the cut in ``1..c`` where FLOPs x J/FLOP + activation bits x J/bit is least).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from flexpl.errors import UserError

if TYPE_CHECKING:  # torch only where FLOPs are counted
    from flexpl.models import BlockModel
    from flexpl.plan.spec import Plan
    from flexpl.system.topology import Topology


def front_count(plan: Plan) -> int:
    """How many leading stages make the device fronts: ``per_node`` stages hosted ``own`` (1 for ``fpl``;
    one per piece when the cut is chosen per device, ``plan.device_cuts``), not relayed, before a trunk."""
    k = 0
    while (k < len(plan.stages) - 1 and plan.stages[k].replication == "per_node" and plan.stages[k].host == "own"
           and plan.stages[k].sync.kind != "relay"):
        k += 1
    return k


def weak_devices(topo: Topology) -> list[str]:
    """Data nodes whose compute (``flops_per_s`` of their profile) is below the median of the data nodes'.

    Well defined for any scenario: when all devices are alike (or half are at the median), none is weak.
    """
    flops = {n: float(topo.nodes[n].flops_per_s) for n in topo.data_nodes}
    if not flops:
        return []
    median = statistics.median(flops.values())
    return [n for n in topo.data_nodes if flops[n] < median]


def auto_device_cuts(topo: Topology, cut: int, allowed: Sequence[int] | None = None) -> dict[str, int]:
    """The ``fpl-devcut`` rule: weak devices (:func:`weak_devices`) cut at ``max(1, cut // 2)``, the rest at ``cut``.

    Never 0 (a device always computes at least one block, so raw samples stay on it); with ``cut`` 1
    every device keeps the whole front (the plan is ``fpl``'s). ``allowed``: the model's allowed cuts
    (``register_model(cuts=...)``): the largest allowed one at or below that, if any.
    """
    small = max(1, cut // 2)
    if allowed is not None:
        small = max((a for a in allowed if 1 <= a <= small), default=cut)
    return {} if small >= cut else dict.fromkeys(weak_devices(topo), small)


def device_cuts_of(plan: Plan) -> dict[str, int]:
    """The per-device cuts a plan already holds: for each data node with a piece of its front hosted
    elsewhere, the start of its first such piece (the block where its own front ends)."""
    cuts: dict[str, int] = {}
    for st in plan.stages[:front_count(plan)]:
        for node, _ in st.hosts:
            cuts.setdefault(node, st.start)
    return cuts


def _trunk_host(plan: Plan, heads: dict[str, str], node: str) -> str:
    trunk = plan.stages[front_count(plan)]
    if trunk.host != "own":
        return dict(trunk.hosts).get(node, trunk.host)
    if trunk.replication == "per_group":
        return heads[node]
    raise UserError(f"plan.device_cuts: plan '{plan.name}' has no trunk off the devices to compute the rest of "
                    "a smaller front; device cuts apply to FPL-style plans (fpl, fpl-sync, fpl-group, sfl)")


def with_device_cuts(plan: Plan, cuts: dict[str, int], topo: Topology) -> Plan:
    """``plan`` with each data node in ``cuts`` cutting its model at its own block (at most the plan's cut).

    The front (its leading ``per_node`` stages hosted ``own``, already split or not) is re-cut at
    every distinct device cut; a node not in ``cuts`` keeps the plan's cut. Each piece keeps the
    front's sync. Errors name ``plan.device_cuts``.
    """
    k = front_count(plan)
    if k == 0 or plan.junction == "features":
        raise UserError(f"plan.device_cuts: plan '{plan.name}' has no per-device front with a batch junction; "
                        "device cuts apply to FPL-style plans (fpl, fpl-sync, fpl-group, sfl)")
    front = plan.stages[0]
    c = plan.stages[k - 1].end
    for node, d in cuts.items():
        if node not in topo.data_nodes:
            raise UserError(f"plan.device_cuts: '{node}' is not a data node; data nodes are "
                            f"{', '.join(topo.data_nodes)}")
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= c:
            raise UserError(f"plan.device_cuts.{node}: cut {d!r} out of range; a device's cut is an integer from "
                            f"0 to the plan's cut {c}, where the fronts meet the trunk (raise plan.cut for "
                            "bigger fronts)")
    groups = plan.groups or {h: tuple(m) for h, m in topo.default_groups().items()}
    heads = {m: h for h, ms in groups.items() for m in ms}
    cut_of = {n: cuts.get(n, c) for n in topo.data_nodes}
    bounds = sorted({0, c, *cut_of.values()})
    if len(bounds) == 1:  # an empty front: nothing to move
        return plan
    pieces = tuple(replace(front, start=a, end=b, hosts=tuple(
        (n, _trunk_host(plan, heads, n)) for n in topo.data_nodes if cut_of[n] < b))
        for a, b in zip(bounds, bounds[1:]))
    return replace(plan, stages=(*pieces, *plan.stages[k:]))


# ------------------------------------------------------------ cuts chosen by device energy

class FrontCosts:
    """``costs(d) -> (FLOPs, bytes)`` of one sample on a front of blocks ``[0, d)``: its forward and backward
    (no input gradient: it is fed raw samples) and the activation it sends at ``d`` (the gradient that
    comes back is as large); cached, counted on a meta copy as the engine counts them. ``allowed``: the
    cuts the model allows (``register_model(cuts=...)``), or None for any."""

    def __init__(self, model: BlockModel, input_shape: tuple[int, ...], allowed: Sequence[int] | None = None) -> None:
        self.model, self.input_shape, self.allowed = model, tuple(input_shape), allowed
        self._cache: dict[int, tuple[int, int]] = {}

    def __call__(self, d: int) -> tuple[int, int]:
        if d not in self._cache:
            import torch

            from flexpl.costs.flops import count_fwd_bwd

            front = self.model.slice(0, d).to("meta")
            fwd, bwd = count_fwd_bwd(front, (1, *self.input_shape), False)
            with torch.no_grad():
                out = front(torch.empty((1, *self.input_shape), device="meta"))
            self._cache[d] = (fwd + bwd, out.numel() * out.element_size())
        return self._cache[d]


def front_costs(model: BlockModel, input_shape: tuple[int, ...], allowed: Sequence[int] | None = None) -> FrontCosts:
    """The per-sample front costs of ``model`` (:class:`FrontCosts`), for the ``fpl-ecut`` rule."""
    return FrontCosts(model, input_shape, allowed)


def energy_device_cuts(topo: Topology, cut: int, costs: Callable[[int], tuple[int, int]]) -> dict[str, int]:
    """The ``fpl-ecut`` rule: each device's cut in ``1..cut`` that spends least of its own energy per sample.

    A device at cut ``d`` computes blocks ``[0, d)`` forward and backward (its J/FLOP) and sends the
    activation at ``d`` and receives its gradient over its first link (that link's ``tx_j_per_bit``
    and ``rx_j_per_bit``). Ties keep the larger cut; never 0 (raw samples stay on the device). Devices
    whose best cut is the plan's are not listed.
    """
    out: dict[str, int] = {}
    allowed = getattr(costs, "allowed", None)  # only the cuts the model allows
    for n in topo.data_nodes:
        hops = topo.route(n, topo.server)
        if not hops or cut < 2:
            continue
        link = topo.links[hops[0].link][2]
        j_bit, j_flop = 8.0 * (link.tx_j_per_bit + link.rx_j_per_bit), topo.nodes[n].energy_per_flop()
        energy = {d: costs(d)[0] * j_flop + costs(d)[1] * j_bit for d in range(1, cut + 1)
                  if allowed is None or d in allowed or d == cut}
        best = min(energy, key=lambda d: (energy[d], -d))
        if best < cut:
            out[n] = best
    return out
