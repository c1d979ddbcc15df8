"""Peak training memory per node, and the check that stops a run whose placement does not fit.

A node's peak (``Planner.memory``, the figure ``flexpl plan`` reports) is, for every stage
replica it hosts: the state dict (weights and buffers such as batch-norm statistics), one
gradient per trainable parameter, the optimizer state (SGD momentum: one buffer per
parameter, Adam: two), and the activations autograd saves for backward on the largest
batch that replica meets (counted from the real modules on the meta device under
``torch.autograd.graph.saved_tensors_hooks``); an aggregator also keeps the averaged copy
of every FedAvg stage. :func:`check_fits` refuses a run before training when a node's
peak exceeds its ``memory_bytes``.
"""

from __future__ import annotations

from typing import Any

from flexpl.errors import UserError
from flexpl.planner.candidates import Candidate
from flexpl.planner.predict import Planner
from flexpl.sim.simulator import build_topology


def node_peaks(scn: Any, dataset: Any = None) -> dict[str, int]:
    """Predicted peak training memory (bytes) of every node for the scenario's own plan, without training."""
    planner = Planner(scn, dataset)
    own = scn.plan.model_dump(exclude_none=True, exclude_defaults=True) if scn.plan is not None else None
    pred = planner.predict(Candidate(f"scenario: {scn.strategy}", scn.strategy, own, "scenario"))
    return pred.peak_memory


def check_fits(scn: Any, dataset: Any = None) -> dict[str, int]:
    """Raise UserError naming the first node whose peak memory exceeds its ``memory_bytes``; else return the peaks."""
    topo = build_topology(scn)
    peaks = node_peaks(scn, dataset)
    for name, need in peaks.items():
        limit = topo.nodes[name].memory_bytes
        if need > limit:
            raise UserError(f"memory: node '{name}' needs {need:.3e} bytes to train this plan (weights, gradients, "
                            f"optimizer state, saved activations) but has memory_bytes {limit:.3e}; use a smaller "
                            "model or batch, another cut, or a node with more memory")
    return peaks
