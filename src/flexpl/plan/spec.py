"""What a plan is, as data: its stages (blocks, replication, host, sync) and, placed on a topology, its layout.

``flexpl.plan.layout`` builds plans (the presets, ``build_plan``) and places them (``place``);
``flexpl.plan.device_cuts`` re-cuts a plan's front per device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass(frozen=True)
class Sync:
    """How the replicas of a stage are kept alike."""

    kind: str = "none"
    every: int = 1
    unit: str = "round"
    at: str | None = None  # aggregator node; None means the scenario's server
    scope: str = "all"  # fedavg: "all" replicas at one aggregator, or each "group" at its group head


@dataclass(frozen=True)
class Stage:
    """Blocks ``[start, end)`` of the model, replicated and hosted as the plan says."""

    start: int
    end: int
    replication: str = "single"
    host: str = "own"
    sync: Sync = field(default_factory=Sync)
    # per_node only: (data node, host) pairs overriding ``host`` for those nodes' replicas, e.g. a
    # weak device's piece of the front hosted at its edge server (plan.device_cuts, flexpl.plan.device_cuts)
    hosts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Plan:
    """Stages, junction, schedule, and whether raw data is collected first (centralized)."""

    name: str
    stages: tuple[Stage, ...]
    junction: str = "batch"
    schedule: str = "lockstep"
    collect_data: bool = False
    groups: dict[str, tuple[str, ...]] | None = None  # head -> data nodes, for per_group


class Replica(NamedTuple):
    """One copy of a stage: where it lives and which data nodes' streams it serves.

    (A named tuple, not a frozen dataclass: a FedAvg of 10,000 clients makes 10,000 of them
    at set-up, and a tuple is made in half the time.)
    """

    stage: int
    index: int
    host: str
    members: tuple[str, ...]


@dataclass
class Layout:
    """A plan placed on a topology: replicas of every stage, and who serves whom."""

    plan: Plan
    replicas: list[list[Replica]]
    serves: list[dict[str, int]]  # stage -> data node -> replica index
    aggregators: list[str | None]
    # stage -> replica index -> its FedAvg aggregator (the stage's aggregator, or its group head
    # for sync scope "group", whose stage aggregator is then None)
    agg_of: list[dict[int, str]] = field(default_factory=list)

    def aggregator(self, s: int, ridx: int) -> str | None:
        """The node that averages replica ``ridx`` of stage ``s`` (None: the stage is not averaged)."""
        if self.agg_of and ridx in self.agg_of[s]:
            return self.agg_of[s][ridx]
        return self.aggregators[s]

    def grouped(self, s: int) -> bool:
        """Whether stage ``s`` is averaged per group, at each group's head (sync scope "group")."""
        st = self.plan.stages[s]
        return st.sync.kind == "fedavg" and st.sync.scope == "group"

    def path(self, node: str) -> list[Replica]:
        """The replicas a data node's samples go through, stage by stage."""
        return [self.replicas[s][self.serves[s][node]] for s in range(len(self.replicas))]
