"""The run's pluggable parts on an engine: the training loss and the FedAvg stages' aggregator."""

from __future__ import annotations

from typing import Any

from flexpl.models.aggregate import make_aggregator, resolve_loss

PROX_FLOPS_PER_PARAM = 3  # FedProx: g += mu * (w - w_global): a subtract, a multiply and an add


def configure(eng: Any, scn: Any) -> None:
    """Give ``eng`` (a :class:`flexpl.sim.engine.Engine`) ``scn``'s loss and a fresh aggregator.

    The loss is billed with the same FLOP counter as cross-entropy (``FlopCache.loss_fn``);
    FedProx's client term adds :data:`PROX_FLOPS_PER_PARAM` FLOPs per trainable parameter to
    every optimizer step of a FedAvg-synced stage.
    """
    eng.loss_fn = resolve_loss(scn.training.loss)
    eng.flops.loss_fn = None if eng.loss_fn.default else eng.loss_fn
    eng.aggregator = make_aggregator(scn.training.aggregator)
    eng.anchors = {}
    if eng.aggregator.proximal:
        eng.opt_flops = [f + prox_flops(eng.plan.stages[s], eng.replicas[s][0].module if eng.replicas[s] else None)
                         for s, f in enumerate(eng.opt_flops)]


def prox_flops(stage: Any, module: Any) -> int:
    """FedProx's extra FLOPs per optimizer step of one replica of ``stage`` (0 unless it is FedAvg-synced)."""
    if module is None or stage.sync.kind != "fedavg":
        return 0
    return PROX_FLOPS_PER_PARAM * sum(p.numel() for p in module.parameters() if p.requires_grad)
