"""The engine's state shared with its mixins and the executors: a live stage replica, and a chunk of replicas
stepped together.

``flexpl.sim.engine`` builds them; ``flexpl.sim.tensor_step``, ``flexpl.sim.exec.working`` and
``flexpl.sim.exec`` (policy, processes) read and fill them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from flexpl.costs.trace import Event
from flexpl.models import BlockModel
from flexpl.plan.spec import Replica


@dataclass(eq=False)  # compared by identity: value equality would compare modules field by field
class ReplicaState:
    """A live stage replica: its module, optimizer, and the event after which its weights are current."""

    spec: Replica
    module: BlockModel
    opt: torch.optim.Optimizer | None
    last_update: Event = None
    twin: tuple[BlockModel, None] | None = None  # a meta copy, for shape-only walks (see Engine.shadow)
    shape_only: bool | None = None  # its module is on the meta device: the step code only tracks shapes

    def __post_init__(self) -> None:
        if self.shape_only is None:  # (given by callers that know, e.g. clients on a working model)
            self.shape_only = any(p.is_meta for p in self.module.parameters())

    @property
    def host(self) -> str:
        """Node that holds this replica."""
        return self.spec.host


@dataclass
class VecChunk:
    """Replicas of one stage run together in one step (by ``vmap`` here, or by worker processes).

    The engine records each replica's actions one by one as usual and takes its input and
    output from ``ins``/``outs``; the chunk's backward runs once, for all of them.
    """

    stage: int
    rows: list[int]        # replica indices
    members: list[str]     # the data node each one serves in this step
    ins: list[torch.Tensor]
    outs: list[torch.Tensor]
    x: torch.Tensor | None = None  # vmap: [k, B, ...] stacked inputs (a leaf; requires grad if sent back)
    params: dict[str, torch.Tensor] = field(default_factory=dict)  # vmap: [k, ...] leaves, rows of the arena
    out: torch.Tensor | None = None  # vmap: [k, B, ...]
    losses: torch.Tensor | None = None  # last stage: each replica's mean loss
    in_grads: list[torch.Tensor] | None = None  # after backward: each input's gradient, if it is sent back
    done: bool = False     # backward and optimizer step already run
    stepped: bool = False  # the optimizer step already ran (stacked, or in a worker)
    remote: Any = None     # the worker pool that runs it (flexpl.sim.exec.processes.StepPool), or None
