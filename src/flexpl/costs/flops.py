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
    """Cached forward/backward FLOPs per (stage, input shape, input needs grad).

    [Note: batch-linear counts] Many steps differ only in batch size (every data node's
    last, partial batch). FLOPs of the zoo's layers are exactly proportional to the batch,
    so after two counts at different batch sizes of the same (stage, sample shape) a third
    size is counted and compared with the straight line through the first two; when it
    lies on it exactly, later batch sizes are read off that line instead of counted (a
    line whose slope is not a whole number of FLOPs is never trusted). Each key is still
    counted for real until then, so a layer whose cost is not linear in the batch is
    caught by the check and keeps being counted.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[int, int]] = {}
        self._seen: dict[tuple, list[tuple[int, tuple[int, int]]]] = {}  # (stage, sample shape, grad) -> counts
        self._line: dict[tuple, tuple[tuple[int, int], tuple[int, int]]] = {}  # -> (intercepts, slopes)
        self.counted = 0  # FlopCounterMode runs so far

    def get(self, stage: int, module: nn.Module, shape: tuple[int, ...], input_grad: bool) -> tuple[int, int]:
        """Forward and backward FLOPs, counted on first use and then looked up."""
        key = (stage, shape, input_grad)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        fam = (stage, shape[1:], input_grad)
        line = self._line.get(fam)
        if line is not None and shape:
            (a_f, a_b), (b_f, b_b) = line
            hit = (a_f + b_f * shape[0], a_b + b_b * shape[0])
        else:
            hit = count_fwd_bwd(module, shape, input_grad)
            self.counted += 1
            if shape:
                self._learn(fam, shape[0], hit)
        self._cache[key] = hit
        return hit

    def _learn(self, fam: tuple, batch: int, counts: tuple[int, int]) -> None:
        seen = self._seen.setdefault(fam, [])
        if fam in self._line or any(b == batch for b, _ in seen):
            return
        seen.append((batch, counts))
        if len(seen) < 3:
            return
        (b1, c1), (b2, c2), (b3, c3) = seen[:3]
        slopes, icepts = [], []
        for j in range(2):
            num = c2[j] - c1[j]
            if num % (b2 - b1):
                return  # not a whole number of FLOPs per sample: never extrapolate
            slope = num // (b2 - b1)
            slopes.append(slope)
            icepts.append(c1[j] - slope * b1)
            if icepts[j] + slope * b3 != c3[j]:
                return
        self._line[fam] = ((icepts[0], icepts[1]), (slopes[0], slopes[1]))

    def __len__(self) -> int:
        return len(self._cache)
