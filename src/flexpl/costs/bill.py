"""The bill of a run: FLOPs, bytes, busy time and energy per node and per link, totalled from round traces.

:class:`Totals` adds each round's trace (``costs/trace.py``) after the virtual clock
(``costs/clock/``) has placed it; :func:`bill` is the one definition of a run's cost totals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flexpl.costs.clock.schedule import schedule
from flexpl.costs.trace import COMPUTE, Trace
from flexpl.system.profiles import DeviceProfile
from flexpl.system.topology import Topology

_ZERO_NODE = {"flops": 0, "bytes_sent": 0, "bytes_received": 0, "energy_j": 0.0, "energy_j_compute": 0.0,
              "energy_j_comm": 0.0, "busy_s": 0.0, "comm_s": 0.0, "eval_flops": 0, "eval_energy_j": 0.0}
_ZERO_LINK = {"bytes": 0, "busy_s": 0.0, "energy_j": 0.0}


@dataclass
class Totals:
    """Cumulative costs: totals and per node / per link."""

    flops: int = 0
    bytes: int = 0
    energy_compute: float = 0.0
    energy_comm: float = 0.0
    sim_time: float = 0.0
    wasted_flops: int = 0
    wasted_bytes: int = 0
    wasted_energy: float = 0.0
    eval_flops: int = 0        # evaluation, billed apart from training (see ``bill``)
    eval_energy: float = 0.0
    node: dict[str, dict[str, float]] = field(default_factory=dict)
    link: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def empty(cls, topo: Topology) -> Totals:
        """Zeroed counters for every node and link of ``topo``."""
        node, link = _ZERO_NODE.copy, _ZERO_LINK.copy  # (a copy of a made dict: half the time of a literal)
        return cls(node={n: node() for n in topo.nodes}, link={n: link() for n in topo.links})

    def add_round(self, trace: Trace, topo: Topology) -> tuple[list[float], list[float]]:
        """Schedule a round's trace after the current clock and add its costs; returns starts and ends."""
        start, end = schedule(trace, self.sim_time)
        self.add_actions(trace, topo)
        if end:
            self.sim_time = max(self.sim_time, max(end))
        return start, end

    def add_actions(self, trace: Trace, topo: Topology, repeat: list[int] | None = None) -> None:
        """Add the FLOPs, bytes, busy time and energy of ``trace``'s actions; the clock is left alone.

        ``repeat[i]`` counts action ``i`` that many times (the planner's compressed traces).
        """
        wasted = trace.wasted if len(trace.wasted) == len(trace) else [0] * len(trace)
        for i in range(len(trace)):
            k = repeat[i] if repeat is not None else 1
            amount, dur, w = trace.amount[i] * k, trace.duration[i] * k, wasted[i] * k
            if trace.kind[i] == COMPUTE:
                node = self.node[trace.src[i]]
                prof = topo.nodes[trace.src[i]]
                # [Note: compute energy] active power x busy time: a straggler slowed k-fold draws
                # its active power k times as long (at full speed this is FLOPs x J/FLOP)
                ej = dur * active_power(prof)
                node["flops"] += amount
                node["busy_s"] += dur
                node["energy_j"] += ej
                node["energy_j_compute"] += ej
                self.flops += amount
                self.energy_compute += ej
                if w:
                    self.wasted_flops += w
                    self.wasted_energy += ej * w / amount
            else:
                lname = topo.link_of.get(trace.resource[i], trace.resource[i])
                link = self.link[lname]
                bits = 8.0 * amount
                hop_prof = topo.links[lname][2]
                etx, erx = bits * hop_prof.tx_j_per_bit, bits * hop_prof.rx_j_per_bit
                link["bytes"] += amount
                link["busy_s"] += dur
                link["energy_j"] += etx + erx
                s, r = self.node[trace.src[i]], self.node[trace.dst[i]]
                s["bytes_sent"] += amount
                r["bytes_received"] += amount
                s["energy_j"] += etx
                s["energy_j_comm"] += etx
                r["energy_j"] += erx
                r["energy_j_comm"] += erx
                # sender and receiver radios are busy for the hop, not idle [Note: idle time]
                s["comm_s"] = s.get("comm_s", 0.0) + dur
                r["comm_s"] = r.get("comm_s", 0.0) + dur
                self.bytes += amount
                self.energy_comm += etx + erx
                if w:
                    self.wasted_bytes += w
                    self.wasted_energy += 8.0 * w * (hop_prof.tx_j_per_bit + hop_prof.rx_j_per_bit)
        # totals as ordered sums of per-node / per-link counters, so that they do not depend on
        # the order in which independent nodes' actions were recorded [Note: node-major order]
        self.energy_compute = sum(d["energy_j_compute"] for d in self.node.values())
        self.energy_comm = sum(d["energy_j"] for d in self.link.values())

    @property
    def energy(self) -> float:
        """Compute plus communication energy (idle is added by the caller when asked)."""
        return self.energy_compute + self.energy_comm

    def add_eval(self, flops: dict[str, int], topo: Topology) -> None:
        """Bill one evaluation: ``flops`` per node that runs it, at that node's J/FLOP (not on the clock)."""
        for n, f in flops.items():
            d = self.node[n]
            e = f * topo.nodes[n].energy_per_flop()
            d["eval_flops"] = d.get("eval_flops", 0) + f
            d["eval_energy_j"] = d.get("eval_energy_j", 0.0) + e
            self.eval_flops += f
        self.eval_energy = sum(d.get("eval_energy_j", 0.0) for d in self.node.values())


def active_power(prof: DeviceProfile) -> float:
    """Watts a node draws while it computes: ``joules_per_flop x flops_per_s`` (= ``active_power_w`` by default)."""
    return prof.energy_per_flop() * float(prof.flops_per_s)


def idle_seconds(totals: Totals, sim_time: float) -> dict[str, float]:
    """Time each node is truly idle: the clock's span minus its compute and its send/receive time.

    [Note: idle time] A node computing, sending or receiving is not idle. Busy and
    communication times are added, not merged: where a node computes while its radio
    sends, that overlap is counted twice as active, so idle time is a lower bound there.
    """
    return {n: max(sim_time - d["busy_s"] - d.get("comm_s", 0.0), 0.0) for n, d in totals.node.items()}


def bill(totals: Totals, topo: Topology, sim_time: float, include_idle: bool, include_eval: bool,
         per_node: bool = True) -> dict[str, Any]:
    """The one definition of a run's cost totals, used by summary.json, rounds.csv and the planner.

    Returns ``flops``, ``energy_j`` (training compute + communication, plus idle energy when
    ``include_idle`` and evaluation when ``include_eval``), ``energy_j_idle`` (0 unless
    ``include_idle``), ``idle_j`` (every node's idle energy, whether included or not),
    ``eval_flops``, ``eval_energy_j`` and ``per_node`` (``flops``, ``energy_j``, ``energy_j_idle``,
    ``idle_s``) on the same terms. ``per_node`` False (a round's row): the totals only, without
    ``per_node`` (and ``idle_j`` only when idle energy is included), and no pass over the nodes
    unless idle energy is included (10,000 nodes, every round).
    """
    idle_s = idle_seconds(totals, sim_time) if per_node or include_idle else {}
    idle_j = {n: topo.nodes[n].idle_power_w * idle_s[n] for n in idle_s}
    energy_idle = sum(idle_j.values()) if include_idle else 0.0
    out: dict[str, Any] = {
        "flops": int(totals.flops) + (int(totals.eval_flops) if include_eval else 0),
        "energy_j": totals.energy + energy_idle + (totals.eval_energy if include_eval else 0.0),
        "energy_j_idle": energy_idle, "eval_flops": int(totals.eval_flops), "eval_energy_j": totals.eval_energy}
    if not per_node:
        return {**out, "idle_j": idle_j} if include_idle else out
    nodes = {}
    for n, d in totals.node.items():
        ev_f, ev_e = d.get("eval_flops", 0), d.get("eval_energy_j", 0.0)
        nodes[n] = {"flops": int(d["flops"]) + (int(ev_f) if include_eval else 0),
                    "energy_j": d["energy_j"] + (idle_j[n] if include_idle else 0.0)
                    + (ev_e if include_eval else 0.0),
                    "energy_j_idle": idle_j[n], "idle_s": idle_s[n],
                    "eval_flops": int(ev_f), "eval_energy_j": ev_e}
    return {**out, "idle_j": idle_j, "per_node": nodes}


def node_link_totals(totals: Totals, topo: Topology, sim_time: float, include_idle: bool,
                     include_eval: bool) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Every node's and link's figures so far (the columns of :data:`flexpl.io.results.ROUND_BILL_FILES`), on the terms of
    summary.json's ``per_node`` and ``per_link`` (the same :func:`bill`): the cumulative figures whose
    differences from round to round are a round's own."""
    b = bill(totals, topo, sim_time, include_idle, include_eval)
    nodes = {}
    for n, d in totals.node.items():
        bn = b["per_node"][n]
        nodes[n] = {"energy_j": bn["energy_j"], "energy_j_compute": d["energy_j_compute"],
                    "energy_j_comm": d["energy_j_comm"], "energy_j_idle": bn["energy_j_idle"],
                    "flops": bn["flops"], "bytes_sent": int(d["bytes_sent"]),
                    "bytes_received": int(d["bytes_received"]), "busy_s": d["busy_s"],
                    "eval_flops": bn["eval_flops"], "eval_energy_j": bn["eval_energy_j"]}
    links = {n: {"bytes": int(d["bytes"]), "busy_s": d["busy_s"], "energy_j": d["energy_j"]}
             for n, d in totals.link.items()}
    return nodes, links


def round_rows(rnd: int, now: Mapping[str, Mapping[str, float]], before: Mapping[str, Mapping[str, float]],
               key: str) -> list[dict[str, Any]]:
    """One round's own figures, ``now`` less ``before`` (cumulative, by name), as rows ``{round, key: name, ...}``.

    A name whose figures did not change in the round (a client not selected) gets no row.
    """
    rows = []
    for name, d in now.items():
        b = before.get(name, {})
        if d == b:  # the common case among thousands of clients, compared in C
            continue
        delta = {k: v - b.get(k, 0) for k, v in d.items()}
        if any(delta.values()):
            rows.append({"round": rnd, key: name, **delta})
    return rows
