"""Replica helpers below the engine: copies of a stage module (real, shell, meta), its optimizer,
the learning-rate schedule and gradient clipping. The engine uses them."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from flexpl.config.training import OptimizerCfg


def meta_copy(module: nn.Module) -> nn.Module:
    """``copy.deepcopy(module).to("meta")`` without copying the weights first (same structure, shapes, flags)."""
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(module, memo).to("meta")


def shell_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters are ``module``'s own (not copied): for replicas that an
    arena gives rows of their own at once (flexpl.sim.exec.stacked), so copying the weights is wasted."""
    memo: dict[int, Any] = {id(p): p for p in module.parameters()}
    return copy.deepcopy(module, memo)


def make_optimizer(module: nn.Module, cfg: OptimizerCfg) -> torch.optim.Optimizer | None:
    """The configured optimizer over ``module``'s parameters (None if it has none)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return None
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_at(cfg: OptimizerCfg, rnd: int, rounds: int) -> float:
    """The learning rate of round ``rnd`` (1-based) of ``rounds`` under ``cfg.schedule``.

    ``constant``: ``lr``. ``step``: ``lr * gamma ** ((rnd - 1) // step_every)``.
    ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * (rnd - 1) / rounds)) / 2`` (round 1
    trains at ``lr``; as torch's ``CosineAnnealingLR`` with ``T_max = rounds``, stepped once a round).
    """
    t = max(rnd - 1, 0)
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (t // cfg.step_every)
    if cfg.schedule == "cosine":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * t / max(rounds, 1))) / 2.0
    return cfg.lr


def clip_coefficients(norms: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """What each gradient is multiplied by to bring its L2 norm down to ``clip_norm`` (as ``clip_grad_norm_``)."""
    return (clip_norm / (norms + 1e-6)).clamp(max=1.0)
