"""FLOP counting with ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add).

Counts run once per (stage, input shape, whether the input needs a gradient) on a
meta-device copy of the stage, so counting never touches real weights or the RNG, and
the training hot path only looks up a dict.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_fwd_bwd(module: nn.Module, input_shape: tuple[int, ...], input_grad: bool,
                  dtype: torch.dtype = torch.float32) -> tuple[int, int]:
    """FLOPs of one forward and one backward pass of ``module`` on an input of ``input_shape``.

    The backward pass computes parameter gradients, and the input gradient only when
    ``input_grad`` (a stage fed by an earlier stage must send that gradient back).
    """
    meta = copy.deepcopy(module).to("meta")
    has_params = any(p.requires_grad for p in meta.parameters())
    x = torch.empty(input_shape, dtype=dtype, device="meta", requires_grad=input_grad)
    with FlopCounterMode(display=False) as counter:
        out = meta(x)
    fwd = int(counter.get_total_flops())
    if not (has_params or input_grad) or not out.requires_grad:
        return fwd, 0
    with FlopCounterMode(display=False) as counter:
        out.backward(torch.empty_like(out))
    return fwd, int(counter.get_total_flops())


class FlopCache:
    """Cached forward/backward FLOPs per (stage, input shape, input needs grad)."""

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[int, int]] = {}

    def get(self, stage: int, module: nn.Module, shape: tuple[int, ...], input_grad: bool) -> tuple[int, int]:
        """Forward and backward FLOPs, counted on first use and then looked up."""
        key = (stage, shape, input_grad)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = count_fwd_bwd(module, shape, input_grad)
        return hit

    def __len__(self) -> int:
        return len(self._cache)
