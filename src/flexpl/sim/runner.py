"""The tensor runner: a round's program (``flexpl.plan.program``) run on the ``Engine``.

The planner walks the same program with its shape runner (``flexpl.planner.walk.ShapeWalk``),
so what a round does, and in which order, is decided once, in ``flexpl.plan.program``. This
runner only turns each operation into the engine's call: real batches for a ``Step``,
weights by samples seen for a FedAvg, and the failure model's extras (downloads thrown
away on nodes that then drop out, uploads kept only if they make the deadline).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from flexpl.io import injected_faults as faults
from flexpl.sim import checkpoint

if TYPE_CHECKING:
    import torch

    from flexpl.sim.engine import Engine
    from flexpl.sim.node_data import NodeData
    from flexpl.sim.state import ReplicaState

def participants(engine: Engine, s: int, selected: Sequence[str]) -> list[ReplicaState]:
    """The replicas of stage ``s`` that serve the nodes ``selected``, in replica order."""
    idx = sorted({engine.layout.serves[s][n] for n in selected})
    return [engine.replicas[s][i] for i in idx]


class TensorRunner:
    """Runs a round's operations on the engine; sums the training loss and the samples each node saw.

    ``plan_batches``: each node's batches (sample indices) this round, as ``Step`` indexes
    them; ``reachable``: nodes a download also reaches (and is thrown away on) although they
    do not train; ``keep``: the upload's deadline check (see ``Engine.upload``); ``log``
    receives the (nodes, batch index) of every step, in order; ``nodes``: the data nodes a
    ``Collect`` ships from.
    """

    def __init__(self, eng: Engine, by_name: dict[str, NodeData] | None = None,
                 plan_batches: dict[str, list[torch.Tensor]] | None = None, rnd: int = 0,
                 log: list[tuple[list[str], int]] | None = None, reachable: Sequence[str] | None = None,
                 keep: Callable[..., Any] | None = None, seen: dict[str, int] | None = None,
                 nodes: Sequence[NodeData] = ()) -> None:
        self.eng = eng
        self.nodes = list(nodes)
        self.collected: NodeData | None = None
        self.by_name = by_name or {}
        self.plan_batches = plan_batches or {}
        self.rnd, self.log = rnd, log
        self.reachable, self.keep = reachable, keep
        self.seen: dict[str, int] = dict.fromkeys(self.plan_batches, 0) if seen is None else seen
        self.loss_sum, self.n_sum, self.joint = 0.0, 0, 0
        self.last_step: tuple[float, int] = (0.0, 0)  # the last step's (loss sum, samples)

    def collect(self, dst: str) -> None:
        """Every data node of ``nodes`` ships its samples and labels to ``dst``; their union there is ``collected``."""
        self.collected = self.eng.collect(self.nodes, dst)

    def download(self, s: int, names: Sequence[str]) -> None:
        """Stage ``s`` to the replicas of ``names``; also to those only ``reachable`` (thrown away)."""
        eng = self.eng
        live = participants(eng, s, names)
        eng.download(s, live)
        with eng.recorder.thrown_away():  # sent to nodes that then drop out of the round
            eng.download(s, [r for r in participants(eng, s, self.reachable if self.reachable is not None
                                                     else names) if r not in live])

    def relay(self, node: str) -> None:
        """``Engine.relay`` to ``node``."""
        self.eng.relay(node)

    def step(self, batch: tuple[tuple[str, int], ...]) -> None:
        """One ``Engine.train_step`` on each node's batch ``t``."""
        names = [n for n, _ in batch]
        data = {}
        for n, t in batch:
            idx = self.plan_batches[n][t]
            # read from the whole training set (no copy of the node's rows), moved once per batch
            data[n] = self.by_name[n].batch(idx, self.eng.device)
            self.seen[n] += len(idx)
        ls, ns = self.last_step = self.eng.train_step(data)
        if self.log is not None:
            self.log.append((names, batch[-1][1]))
        self.loss_sum, self.n_sum, self.joint = self.loss_sum + ls, self.n_sum + ns, self.joint + 1
        faults.after_train_step(self.rnd, self.joint, checkpoint.drain)  # test hook (io.injected_faults)

    def step_sync(self, s: int, names: Sequence[str]) -> None:
        """Step-level FedAvg of stage ``s`` over the step's replicas, weighted by samples seen."""
        eng = self.eng
        reps = participants(eng, s, names)
        eng.upload(s, reps, self._weights(reps))
        eng.download(s, reps)

    def upload(self, s: int, names: Sequence[str]) -> None:
        """End-of-round FedAvg of stage ``s`` over the replicas of ``names`` (if any), weighted by samples seen."""
        reps = participants(self.eng, s, names)
        if reps:
            self.eng.upload(s, reps, self._weights(reps), keep=self.keep)

    def _weights(self, reps: list[ReplicaState]) -> list[float]:
        seen = self.seen
        return [sum(seen[m] for m in r.spec.members if m in seen) for r in reps]
