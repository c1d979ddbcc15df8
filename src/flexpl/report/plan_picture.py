"""Pictures of the plan: the topology by tier with the plan placed on it and what crosses each link.

:func:`picture_data` builds the data (nodes with their tier, the blocks each runs and the stages
averaged there; links with bandwidth, duplex and the bytes of one round by kind) from the
topology, the plan's stages and one round's actions (rows as in timeline.csv). Two sources feed
it: a finished run's ``timeline.csv`` (its last round, :func:`picture_of_run`) and, without
training, the planner's walk of the scenario's round (:func:`picture_of_scenario`), the same
round program the simulator runs. :func:`draw` turns the data into a PNG; raw data crossing a
link is drawn in red.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("weights", "activations", "gradients", "labels", "raw data")
COLORS = {"weights": "#1f77b4", "activations": "#2ca02c", "gradients": "#9467bd", "labels": "#8c564b",
          "raw data": "#e6001a"}
TIERS = ("device", "edge", "cloud")
_LABEL = re.compile(r"^s(\d+)r(\d+)$")


@dataclass(frozen=True)
class StageInfo:
    """One stage of the plan: blocks ``[start, end)`` and where its replicas are averaged (None: never)."""

    start: int
    end: int
    averaged_at: str | None = None


@dataclass
class PicNode:
    """A node of the picture: its tier, the stages (hence blocks) it runs, the stages averaged on it."""

    name: str
    tier: str
    stages: list[int] = field(default_factory=list)
    blocks: list[tuple[int, int]] = field(default_factory=list)
    averages: list[int] = field(default_factory=list)
    holds_data: bool = False


@dataclass
class PicEdge:
    """A link of the picture: endpoints, bandwidths (bit/s), duplex, and one round's bytes by kind."""

    name: str
    a: str
    b: str
    up_bps: float
    down_bps: float
    duplex: str
    bytes: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        """All bytes that crossed the link in the round."""
        return float(sum(self.bytes.values()))


@dataclass
class PlanPicture:
    """The picture's data: a title, the nodes and the links."""

    title: str
    nodes: list[PicNode]
    edges: list[PicEdge]


def kind_of(what: str, label: str, stages: Sequence[StageInfo]) -> str:
    """The kind of a transfer (one of :data:`KINDS`) from its ``what`` and ``label``.

    Raw data: collected samples (``data``), streamed inputs (``input``), and the "activation" sent
    into a stage that starts at block 0 (an empty front stage), the planner's rule for raw bytes.
    """
    if what in ("data", "input", "batch"):
        return "raw data"
    if what in ("activation", "features"):
        m = _LABEL.match(label)
        if m and int(m.group(1)) < len(stages) and stages[int(m.group(1))].start == 0:
            return "raw data"
        return "activations"
    if what == "gradient":
        return "gradients"
    if what == "labels":
        return "labels"
    return "weights"  # weights, momentum, optimizer state


def picture_data(topo: Any, stages: Sequence[StageInfo], rows: Iterable[Mapping[str, Any]],
                 title: str = "") -> PlanPicture:
    """The picture of one round: ``topo`` (a :class:`flexpl.system.topology.Topology`), the plan's
    ``stages`` and the round's actions ``rows`` (``resource_kind`` node/link, ``what``, ``label``,
    ``src``, ``dst``, ``bytes``: timeline.csv's columns).

    A node runs stage s when a compute row labelled ``s<s>r<r>`` is on it; each link's bytes are
    the link rows between its two endpoints, summed by :func:`kind_of`.
    """
    pair = {frozenset((a, b)): name for name, (a, b, _) in topo.links.items()}
    ran: dict[str, set[int]] = {n: set() for n in topo.nodes}
    per_link: dict[str, dict[str, float]] = {name: {} for name in topo.links}
    for r in rows:
        if r.get("resource_kind") == "node":
            m = _LABEL.match(str(r.get("label", "")))
            if m and r.get("src") in ran:
                ran[str(r["src"])].add(int(m.group(1)))
            continue
        link = pair.get(frozenset((r.get("src"), r.get("dst"))))
        if link is None:
            continue
        k = kind_of(str(r.get("what", "")), str(r.get("label", "")), stages)
        per_link[link][k] = per_link[link].get(k, 0.0) + float(r.get("bytes") or 0)
    nodes = []
    for n in topo.nodes:
        tier = "cloud" if n == topo.server else "device" if n in topo.data_nodes else "edge"
        st = sorted(ran[n])
        nodes.append(PicNode(n, tier, st, [(stages[s].start, stages[s].end) for s in st if s < len(stages)],
                             [s for s, info in enumerate(stages) if info.averaged_at == n],
                             n in topo.data_nodes))
    edges = [PicEdge(name, a, b, float(p.bandwidth_up_bps), float(p.bandwidth_down_bps), str(p.duplex),
                     {k: per_link[name][k] for k in KINDS if k in per_link[name]})
             for name, (a, b, p) in topo.links.items()]
    return PlanPicture(title, nodes, edges)


def _stages_of_summary_plan(plan: Mapping[str, Any], server: str) -> list[StageInfo]:
    out = []
    for st in plan.get("stages", []):
        lo, hi = st.get("blocks", [0, 0])
        sync = st.get("sync") or {}
        out.append(StageInfo(int(lo), int(hi), (sync.get("at") or server) if sync.get("kind") == "fedavg" else None))
    return out


def picture_of_run(folder: str | Path) -> PlanPicture:
    """The picture of a finished run: its config.yaml's topology, summary.json's plan, timeline.csv's last round.

    Reads the run only: user code its scenario names is not imported.
    """
    from flexpl.config.scenario import load_scenario
    from flexpl.io.user_code import user_code_unchecked
    from flexpl.system.topology import Topology

    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    with user_code_unchecked():  # the topology is all it needs: the run's code is never imported here
        scn = load_scenario(str(folder / "config.yaml"), [], None, None)
    topo = Topology.from_scenario(scn)
    with open(folder / "timeline.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]["round"] if rows else ""
    title = f"{summary.get('scenario')} / {summary.get('strategy')}: round {last}"
    return picture_data(topo, _stages_of_summary_plan(summary.get("plan") or {}, topo.server),
                        [r for r in rows if r["round"] == last], title)


def picture_of_scenario(scn: Any, plan: Mapping[str, Any] | None = None, strategy: str | None = None,
                        dataset: Any = None, planner: Any = None) -> PlanPicture:
    """The picture of a scenario's plan (or ``strategy``/``plan``) without training: the planner's walk of round 1.

    ``planner``: a :class:`flexpl.planner.predict.Planner` of ``scn`` already built (``flexpl plan``'s), else one is made.
    """
    from flexpl.costs.trace import COMPUTE
    from flexpl.planner.candidates import Candidate
    from flexpl.planner.predict import Planner

    planner = planner or Planner(scn, dataset)
    strategy = strategy or scn.strategy
    if plan is None and strategy == scn.strategy and scn.plan is not None:
        plan = scn.plan.model_dump(exclude_none=True, exclude_defaults=True)
    ctx = planner.context(Candidate("picture", strategy, dict(plan) if plan else None, "picture"))
    kind = next(iter(planner.round_kinds(ctx)))  # round 1
    walked = planner.round_cost(ctx, kind)
    ct = walked.compressed
    if ct is None:  # this round was clocked already (flexpl plan): walk it again, uncached
        from flexpl.planner.walk import ShapeWalk

        walk = ShapeWalk(ctx)
        walk.relay_holder = kind[3]
        ct = walk.walk(kind[0], kind[1], kind[4])
    t, repeat = ct.trace, ct.repeat()
    rows = [{"resource_kind": "node" if t.kind[i] == COMPUTE else "link", "what": t.what[i], "label": t.label[i],
             "src": t.src[i], "dst": t.dst[i], "bytes": 0 if t.kind[i] == COMPUTE else t.amount[i] * repeat[i]}
            for i in range(len(t))]
    stages = [StageInfo(st.start, st.end, ctx.layout.aggregators[s] if st.sync.kind == "fedavg" else None)
              for s, st in enumerate(ctx.plan.stages)]
    return picture_data(planner.topo, stages, rows, f"{scn.name} / {ctx.plan.name}: round 1 (planned)")


def _si(v: float, unit: str) -> str:
    for f, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= f:
            return f"{v / f:.3g} {p}{unit}"
    return f"{v:.3g} {unit}"


def draw(pic: PlanPicture) -> bytes:
    """The picture as a PNG: tiers as rows (cloud on top), blocks on each node, bytes by kind on each link."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {tier: [n for n in pic.nodes if n.tier == tier] for tier in TIERS}
    pos: dict[str, tuple[float, float]] = {}
    for y, tier in enumerate(TIERS):
        ns = rows[tier]
        for i, n in enumerate(ns):
            pos[n.name] = ((i + 1) / (len(ns) + 1), float(y))
    width = max(8.0, 2.0 * max(len(v) for v in rows.values()))
    fig, ax = plt.subplots(figsize=(width, 7.5))
    for j, e in enumerate(pic.edges):
        (x0, y0), (x1, y1) = pos[e.a], pos[e.b]
        raw = e.bytes.get("raw data", 0) > 0
        ax.plot([x0, x1], [y0, y1], color=COLORS["raw data"] if raw else "#98a2b3", lw=4 if raw else 1.5, zorder=1)
        lines = [f"↑{_si(e.up_bps, 'b/s')} ↓{_si(e.down_bps, 'b/s')}", f"{e.duplex} duplex"]
        lines += [f"{k}: {_si(v, 'B')}" for k, v in e.bytes.items() if v]
        if y0 > y1:  # the label sits near the lower end, where the links of a tier fan out
            (x0, y0), (x1, y1) = (x1, y1), (x0, y0)
        f = (0.25 if j % 2 == 0 else 0.55) / (y1 - y0) if y1 > y0 else 0.5  # staggered: neighbours do not overlap
        xm, ym = x0 + f * (x1 - x0), y0 + f * (y1 - y0)
        txt = ax.text(xm, ym, "\n".join(lines), fontsize=6.5, ha="center", va="center", zorder=3,
                      bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": COLORS["raw data"] if raw else "#d0d5dd",
                            "lw": 2 if raw else 0.5})
        if raw:
            txt.set_color(COLORS["raw data"])
            txt.set_fontweight("bold")
    for n in pic.nodes:
        x, y = pos[n.name]
        desc = [n.name]
        desc += [f"blocks {lo}–{hi - 1}" if hi - lo > 1 else f"block {lo}" if hi > lo else "no blocks"
                 for lo, hi in n.blocks]
        if n.averages:
            desc.append("averages " + ", ".join(f"stage {s}" for s in n.averages))
        ax.text(x, y, "\n".join(desc), ha="center", va="center", fontsize=8, zorder=4,
                bbox={"boxstyle": "round,pad=0.35", "fc": "#eef4ff" if n.stages else "#f2f4f7",
                      "ec": "#344054", "lw": 1.5 if n.averages else 0.8})
    for y, tier in enumerate(TIERS):
        ax.text(-0.02, y, tier, ha="right", va="center", fontsize=10, fontweight="bold", color="#475467")
    handles = [plt.Line2D([], [], color=COLORS[k], lw=4 if k == "raw data" else 2, label=k) for k in KINDS]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.12), ncol=5, fontsize=8, frameon=False,
              title="bytes per round on each link, by kind (raw data: red, thick link)", title_fontsize=8)
    ax.set_xlim(-0.1, 1.05)
    ax.set_ylim(-0.5, 2.5)
    ax.axis("off")
    ax.set_title(pic.title, fontsize=11, loc="left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
