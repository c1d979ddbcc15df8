"""FLOP counting with ``torch.utils.flop_counter.FlopCounterMode``: every arithmetic op.

[Note: FLOP convention] Matrix products and convolutions count 2 FLOPs per multiply-add
(FlopCounterMode's own formulas). Everything else that does arithmetic counts too
(:data:`FULL_MAPPING`): an element-wise op (bias add, ReLU and other activations, dropout,
the gradient of each) 1 FLOP per element it writes; a reduction or a pooling window 1 FLOP
per element it reads; normalisation, softmax and the loss by the formulas below. View,
copy and indexing ops count 0. The optimizer step (:func:`optimizer_flops`) and FedAvg
(``flexpl.models.aggregate.fedavg_flops``) are counted per element from their update rules. FlopCounterMode's
default (matmul/conv only) is the "classic" count, kept as ``count_fwd_bwd(classic=True)``.

Counts run once per (stage, input shape, whether the input needs a gradient, whether
the loss follows) on a meta-device copy of the stage, so counting never touches real
weights or the RNG, and the training hot path only looks up a dict.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter as _fc
from torch.utils.flop_counter import FlopCounterMode

from flexpl.errors import UserError

aten = torch.ops.aten


def _n(shape: Any) -> int:
    """Elements of a shape; of the first output when an op returns several."""
    if shape is None:
        return 0
    if len(shape) and isinstance(shape[0], (tuple, list)):
        return _n(shape[0])
    return math.prod(shape)


def _per_out(k: int = 1) -> Any:
    def f(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return k * _n(out_shape)
    return f


def _per_in(k: int = 1) -> Any:
    def f(x: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return k * _n(x)
    return f


def _addmm(bias: Any, a: Any, b: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return _fc.addmm_flop.__wrapped__(bias, a, b) + _n(out_shape)  # the matmul, then the bias add


def _conv(x: Any, w: Any, bias: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return _fc.conv_flop.__wrapped__(x, w, bias, *args, out_shape=out_shape) + (_n(out_shape) if bias else 0)


def _conv_bwd(grad_out: Any, x: Any, w: Any, bias: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    mask = args[-1]
    flops = _fc.conv_backward_flop.__wrapped__(grad_out, x, w, bias, *args, out_shape=out_shape)
    return flops + (_n(grad_out) if mask[2] else 0)  # the bias gradient: a sum over the output


def _pool(x: Any, kernel: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    k = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel]
    return _n(out_shape) * math.prod(k * (2 if len(k) == 1 else 1))  # each output reads its window


def _log_softmax(x: Any, dim: int, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    # per row of C: max (C), x - max (C), exp (C), sum (C), log (1), - log-sum (C)
    return 5 * _n(x) + _n(x) // x[dim]


def _nll(x: Any, target: Any, weight: Any, reduction: int, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return _n(target) + (1 if reduction == 1 else 0)  # sum of the picked terms, / batch for the mean


def _nll_bwd(grad: Any, x: Any, target: Any, weight: Any, reduction: int, *args: Any, out_shape: Any = None,
             **kwargs: Any) -> int:
    return _n(target) + (1 if reduction == 1 else 0)  # -grad / batch written at each target


def _norm(k: int) -> Any:
    def f(x: Any, weight: Any = None, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return (k + (2 if weight is not None else 0)) * _n(x)  # + scale and shift when affine
    return f


_ELEMENTWISE = ("relu", "relu_", "threshold_backward", "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_",
                "neg", "exp", "log", "sqrt", "rsqrt", "pow", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
                "gelu", "gelu_backward", "silu", "silu_backward", "hardtanh", "hardtanh_backward", "leaky_relu",
                "leaky_relu_backward", "elu", "elu_backward", "clamp", "clamp_min", "maximum", "minimum", "abs",
                "addcmul", "addcdiv", "lerp", "native_dropout_backward", "hardswish", "hardswish_backward")

FULL_MAPPING: dict[Any, Any] = {getattr(aten, name): _per_out() for name in _ELEMENTWISE if hasattr(aten, name)}
FULL_MAPPING.update({
    aten.addmm: _addmm, aten.convolution: _conv, aten.convolution_backward: _conv_bwd,
    aten.native_dropout: _per_out(2),                       # draw the mask, scale
    aten.sum: _per_in(), aten.mean: _per_in(), aten.amax: _per_in(),
    aten.max_pool2d_with_indices: _pool, aten.avg_pool2d: _pool,
    aten.max_pool2d_with_indices_backward: _per_in(),       # each gradient added into its input's place
    aten.avg_pool2d_backward: _per_in(),
    aten._adaptive_avg_pool2d: lambda x, *a, out_shape=None, **k: _n(x) + _n(out_shape),
    aten._adaptive_avg_pool2d_backward: lambda g, x, *a, out_shape=None, **k: _n(x),
    aten._log_softmax: _log_softmax, aten._softmax: _log_softmax,
    aten._log_softmax_backward_data: _per_out(4),           # g - exp(out) * sum(g)
    aten._softmax_backward_data: _per_out(4),               # out * (g - sum(g * out))
    aten.nll_loss_forward: _nll, aten.nll_loss_backward: _nll_bwd,
    aten.native_batch_norm: _norm(5), aten._native_batch_norm_legit: _norm(5),  # mean, x-mean, square, sum, * rstd
    aten._native_batch_norm_legit_no_training: _norm(2),    # x - mean, * rstd
    aten.native_layer_norm: _norm(5),
    aten.native_batch_norm_backward: _per_in(8), aten.native_layer_norm_backward: _per_in(8),
})
"""Formulas of every op FlexPL counts beyond FlopCounterMode's matmuls and convolutions (see the module note)."""


def flop_counter(classic: bool = False) -> FlopCounterMode:
    """A FlopCounterMode with FlexPL's convention, or with torch's default mapping (``classic``)."""
    return FlopCounterMode(display=False, custom_mapping=None if classic else FULL_MAPPING)


def count_fwd_bwd(module: nn.Module, input_shape: tuple[int, ...], input_grad: bool,
                  dtype: torch.dtype = torch.float32, loss: bool | Callable[..., torch.Tensor] = False,
                  classic: bool = False) -> tuple[int, int]:
    """FLOPs of one forward and one backward pass of ``module`` on an input of ``input_shape``.

    The backward pass computes parameter gradients, and the input gradient only when
    ``input_grad`` (a stage fed by an earlier stage must send that gradient back). With
    ``loss``, the cross-entropy loss of the output (mean over the batch) is counted too,
    and the backward starts from it; a callable ``loss(logits, labels)`` is counted instead of
    cross-entropy (``training.loss``). ``classic`` counts matmuls and convolutions only.
    """
    meta = copy.deepcopy(module).to("meta")
    has_params = any(p.requires_grad for p in meta.parameters())
    x = torch.empty(input_shape, dtype=dtype, device="meta", requires_grad=input_grad)
    with flop_counter(classic) as counter:
        out = meta(x)
        if loss:
            out = loss_on_meta(loss, out)
    fwd = int(counter.get_total_flops())
    if not (has_params or input_grad) or not out.requires_grad:
        return fwd, 0
    with flop_counter(classic) as counter:
        out.backward(torch.empty_like(out))
    return fwd, int(counter.get_total_flops())


def loss_on_meta(loss: bool | Callable[..., torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """The loss (cross-entropy when ``loss is True``) of meta logits ``out`` against meta labels, for counting."""
    labels = torch.empty(out.shape[:1], dtype=torch.long, device="meta")
    if loss is True:
        return F.cross_entropy(out, labels)
    try:
        return loss(out, labels)
    except Exception as exc:  # e.g. .item() on a meta tensor
        raise UserError(f"training.loss: cannot count its FLOPs on meta tensors ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); use torch operations only") from None


def optimizer_flops(n_params: int, name: str, momentum: float = 0.0, weight_decay: float = 0.0) -> int:
    """FLOPs of one optimizer step over ``n_params`` parameters, per element from the update rule.

    SGD: ``p -= lr * g`` is 2; momentum ``buf = m * buf + g`` adds 2 (counted on every step,
    also the first after a reset, where torch copies g into the buffer); weight decay
    ``g += wd * p`` adds 2. Adam: ``m.lerp_(g, 1-b1)`` 3, ``v = b2 * v + (1-b2) * g * g`` 4,
    ``denom = sqrt(v) / sqrt(bc2) + eps`` 3, ``p -= lr / bc1 * m / denom`` 3: 13, plus 2 for
    weight decay. Per-step scalars (bias corrections) are not counted.
    """
    if name == "adam":
        per = 13
    else:
        per = 2 + (2 if momentum else 0)
    return n_params * (per + (2 if weight_decay else 0))


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
        self.loss_fn: Callable[..., torch.Tensor] | None = None  # training.loss when not cross-entropy

    def get(self, stage: int, module: nn.Module, shape: tuple[int, ...], input_grad: bool,
            loss: bool = False) -> tuple[int, int]:
        """Forward and backward FLOPs (with the loss after it when ``loss``), counted on first use and then looked up."""
        key = (stage, shape, input_grad, loss)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        fam = (stage, shape[1:], input_grad, loss)
        line = self._line.get(fam)
        if line is not None and shape:
            (a_f, a_b), (b_f, b_b) = line
            hit = (a_f + b_f * shape[0], a_b + b_b * shape[0])
        else:
            hit = count_fwd_bwd(module, shape, input_grad, loss=(self.loss_fn or True) if loss else False)
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
