"""The failure model: who drops out, who straggles, which links go down, in one round.

Every draw comes from a generator keyed by (seed, round, attempt), so a scenario fails the
same way on every run, and a redone round draws afresh. The plans react as their real
counterparts would, through the ordinary round loop: a node that is absent simply takes
no part (FedAvg averages the updates that arrived, SplitFed/FPL skip its branch, the
split-learning relay passes it by); see ``simulator.run``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flexpl.config.engine import FailuresCfg, StragglerCfg
from flexpl.data.batching import mix_seed
from flexpl.plan.spec import Layout
from flexpl.system.topology import Topology


@dataclass
class RoundFailures:
    """What goes wrong in one round (one attempt of it)."""

    dropped: set[str] = field(default_factory=set)        # data nodes that drop out after receiving weights
    cut_off: set[str] = field(default_factory=set)        # data nodes that need a link that is down
    links_down: set[str] = field(default_factory=set)
    slowdown: dict[str, float] = field(default_factory=dict)
    host_failed: str | None = None                        # a node holding a shared stage that fails
    loss: dict[str, float] = field(default_factory=dict)  # link -> loss probability per transmission

    @property
    def absent(self) -> set[str]:
        """Data nodes that take no part in this round."""
        return self.dropped | self.cut_off


def _multiplier(cfg: StragglerCfg, rng: np.random.Generator) -> float:
    if cfg.kind == "uniform":
        return float(rng.uniform(cfg.low, max(cfg.low, cfg.high)))
    if cfg.kind == "lognormal":
        return float(np.exp(cfg.sigma * abs(rng.standard_normal())))
    return 1.0


def needed_links(topo: Topology, layout: Layout, node: str) -> set[str]:
    """Links a data node's round needs: its path through the stages and the way to each aggregator."""
    links: set[str] = set()
    prev = node
    for s, rep in enumerate(layout.path(node)):
        links.update(h.link for h in topo.route(prev, rep.host))
        agg = layout.aggregator(s, rep.index)
        if agg is not None:
            links.update(h.link for h in topo.route(rep.host, agg))
        prev = rep.host
    links.update(h.link for h in topo.route(node, prev))  # labels to the last stage
    return links


def draw(cfg: FailuresCfg, topo: Topology, layout: Layout, seed: int, rnd: int, attempt: int) -> RoundFailures:
    """Draw one round's failures (nodes, then links, in scenario order, so draws are stable)."""
    rng = np.random.default_rng(mix_seed(seed, rnd, attempt, "failures"))
    out = RoundFailures()
    for n in topo.nodes:
        over = cfg.nodes.get(n)
        p_drop = over.dropout if over and over.dropout is not None else cfg.dropout
        p_host = over.host_failure if over and over.host_failure is not None else cfg.host_failure
        strag = over.straggler if over and over.straggler is not None else cfg.straggler
        u_drop, u_host = rng.random(), rng.random()
        out.slowdown[n] = _multiplier(strag, rng)
        if n in topo.data_nodes and u_drop < p_drop:
            out.dropped.add(n)
        shared = any(len(r.members) > 1 and r.host == n for reps in layout.replicas for r in reps)
        if shared and u_host < p_host and out.host_failed is None:
            out.host_failed = n
    for name in topo.links:
        over = cfg.links.get(name)
        p_out = over.outage if over and over.outage is not None else cfg.link_outage
        out.loss[name] = over.loss if over and over.loss is not None else cfg.transfer_loss
        if rng.random() < p_out:
            out.links_down.add(name)
    if out.links_down:
        for n in layout.serves[0]:
            if needed_links(topo, layout, n) & out.links_down:
                out.cut_off.add(n)
    out.dropped -= out.cut_off
    return out
