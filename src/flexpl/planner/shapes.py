"""Stage costs from shapes: FLOPs, output shapes, saved activations and weights of model stages, cached."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from flexpl.costs.flops import count_fwd_bwd
from flexpl.data.batching import node_batch
from flexpl.models import BlockModel, build_model
from flexpl.sim.engine import stage_module


def saved_activation_bytes(module: BlockModel, shape: tuple[int, ...], input_grad: bool
                           ) -> tuple[tuple[int, ...], int, int]:
    """Output shape, output element size, and bytes autograd saves for backward on an input of ``shape``.

    Runs ``module`` (a meta copy is made if needed) under ``saved_tensors_hooks`` and sums
    each distinct saved storage once; parameters (saved by Linear/Conv) are excluded because
    they are counted as parameters. The input counts when a layer saves it.
    """
    import torch

    meta = module if next(iter(module.parameters()), torch.empty(0, device="meta")).is_meta \
        else copy.deepcopy(module).to("meta")
    # untyped_storage()._cdata identifies a storage, also on the meta device (data_ptr is 0 there)
    params = {p.untyped_storage()._cdata for p in meta.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st._cdata not in params:
            saved[st._cdata] = st.nbytes()
        return t

    x = torch.empty(shape, dtype=torch.float32, device="meta", requires_grad=input_grad)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = meta(x)
    return tuple(int(d) for d in out.shape), out.element_size(), sum(saved.values())


@dataclass(frozen=True)
class StageProbe:
    """What one stage costs on one input shape: FLOPs, output, activations saved for backward."""

    fwd: int
    bwd: int
    out_shape: tuple[int, ...]
    out_esize: int
    saved_bytes: int


class StageCosts:
    """FLOPs (the engine's counter), shapes, saved activations and weights of model stages, cached.

    One instance serves every candidate of a scenario: a stage is keyed by the model
    variant (input shape, feature-junction block and branches) and its block range.
    """

    def __init__(self, spec: Any, num_classes: int, seed: int) -> None:
        self.spec, self.num_classes, self.seed = spec, num_classes, seed
        self.loss_fn: Any = None  # training.loss when not cross-entropy (counted like it)
        self._models: dict[tuple, BlockModel] = {}
        self._stages: dict[tuple, BlockModel] = {}
        self._probes: dict[tuple, StageProbe] = {}
        self._per_sample: dict[tuple, tuple | None] = {}
        self._weights: dict[tuple, tuple[int, int, int]] = {}

    def model(self, variant: tuple) -> BlockModel:
        """The full model of ``variant`` = (input shape, junction block or None, branches), on meta."""
        hit = self._models.get(variant)
        if hit is None:
            import torch

            shape, junction, branches = variant
            with torch.random.fork_rng(devices=[]):  # build_model seeds the global RNG; leave it as it was
                hit = build_model(self.spec, shape, self.num_classes, seed=self.seed, junction_block=junction,
                                  branches=branches).to("meta")
            self._models[variant] = hit
        return hit

    def stage(self, variant: tuple, start: int, end: int) -> BlockModel:
        """Blocks ``[start, end)`` of the variant's model (meta), as ``plan.py`` cuts them."""
        key = (variant, start, end)
        hit = self._stages.get(key)
        if hit is None:
            hit = self._stages[key] = stage_module(self.model(variant), start, end)
        return hit

    def probe(self, variant: tuple, start: int, end: int, shape: tuple[int, ...], input_grad: bool,
              loss: bool = False) -> StageProbe:
        """FLOPs (``count_fwd_bwd``, as the engine's FlopCache; with the loss when ``loss``), output
        and saved bytes; cached.

        A round meets many batch sizes (last batches, joined batches), so a stage is counted
        at batch sizes 1, 2 and 3: where FLOPs and saved bytes are affine in the batch (true
        of every layer in the zoo; the mean loss adds one division per batch), other sizes
        are read off the line through those counts exactly; otherwise the shape is counted directly.
        """
        key = (variant, start, end, shape, input_grad, loss)
        hit = self._probes.get(key)
        if hit is None:
            per = (variant, start, end, shape[1:], input_grad, loss)
            if per not in self._per_sample:
                ones = [self._count(variant, start, end, (b, *shape[1:]), input_grad, loss) for b in (1, 2, 3)]
                d = [ones[1].fwd - ones[0].fwd, ones[1].bwd - ones[0].bwd]
                linear = all(p.fwd == ones[0].fwd + (b - 1) * d[0] and p.bwd == ones[0].bwd + (b - 1) * d[1]
                             and p.out_shape[0] == b and p.out_shape[1:] == ones[0].out_shape[1:]
                             for b, p in zip((1, 2, 3), ones))
                affine = ones[2].saved_bytes - ones[1].saved_bytes == ones[1].saved_bytes - ones[0].saved_bytes
                self._per_sample[per] = (ones[0], ones[1].saved_bytes - ones[0].saved_bytes, d) \
                    if linear and affine else None
            lin = self._per_sample[per]
            b = shape[0]
            if lin is None or not shape:
                hit = self._count(variant, start, end, shape, input_grad, loss)
            else:
                one, saved_per, d = lin
                hit = StageProbe(one.fwd + (b - 1) * d[0], one.bwd + (b - 1) * d[1], (b, *one.out_shape[1:]),
                                 one.out_esize, one.saved_bytes + (b - 1) * saved_per)
            self._probes[key] = hit
        return hit

    def _count(self, variant: tuple, start: int, end: int, shape: tuple[int, ...], input_grad: bool,
               loss: bool = False) -> StageProbe:
        mod = self.stage(variant, start, end)
        fwd, bwd = count_fwd_bwd(mod, shape, input_grad, loss=(self.loss_fn or True) if loss else False)
        out_shape, esize, saved = saved_activation_bytes(mod, shape, input_grad)
        return StageProbe(fwd, bwd, out_shape, esize, saved)

    def float_elements(self, variant: tuple, start: int, end: int) -> int:
        """Floating-point elements of a stage's state dict (what FedAvg averages)."""
        return sum(t.numel() for t in self.stage(variant, start, end).state_dict().values() if t.is_floating_point())

    def weights(self, variant: tuple, start: int, end: int, trainable_count: bool = False) -> tuple[int, int, int]:
        """(parameter count, trainable parameter bytes, state-dict bytes) of a stage."""
        key = (variant, start, end)
        hit = self._weights.get(key)
        if hit is None:
            mod = self.stage(variant, start, end)
            params = sum(p.numel() for p in mod.parameters())
            trainable = sum(p.numel() * p.element_size() for p in mod.parameters() if p.requires_grad)
            state = sum(t.numel() * t.element_size() for t in mod.state_dict().values())
            hit = self._weights[key] = (params, trainable, state)
        if trainable_count:  # trainable parameters, as the optimizer sees them
            mod = self.stage(variant, start, end)
            return sum(p.numel() for p in mod.parameters() if p.requires_grad), hit[1], hit[2]
        return hit


# ---------------------------------------------------------------------------------- batches


def batch_sizes(n: int, epochs: int, batch_size: int, max_steps: int | None, steps: int | None = None) -> list[int]:
    """Sizes of a node's batches in one round, as ``data.batching.batches`` splits its shuffles."""
    if steps is not None:  # equal_steps batching: batches of ceil(n / steps), as data.batching.node_batch
        batch_size = node_batch(n, steps)
    one = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    out = one * epochs
    return out[:max_steps] if max_steps else out
