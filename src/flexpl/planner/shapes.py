"""Stage costs from shapes: FLOPs, output shapes, saved activations and weights of model stages, cached."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

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
class _BlockCount:
    """One block counted alone: its probe, and how its saved storages meet its neighbours' (see
    [Note: stages from blocks]): bytes saved other than the input's storage, whether it saves its input
    (of ``in_bytes``) and its output, and whether its output needs a gradient."""

    probe: StageProbe
    saved_other: int
    in_saved: bool
    in_bytes: int
    out_saved: bool
    out_grad: bool


def count_block(module: BlockModel, shape: tuple[int, ...], input_grad: bool,
                loss: bool | Any = False) -> _BlockCount:
    """FLOPs (exactly ``count_fwd_bwd``'s) and saved activations (``saved_activation_bytes``'s) of ``module``
    in one forward pass, plus what :class:`StageCosts` needs to add blocks into stages.

    ``module`` is on the meta device; its parameters' gradients are dropped after the backward, so it is
    left as a fresh copy would be (``count_fwd_bwd`` counts on a copy).
    """
    import torch

    from flexpl.costs.flops import flop_counter, loss_on_meta

    params = list(module.parameters())
    ids = {p.untyped_storage()._cdata for p in params}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st._cdata not in ids:
            saved[st._cdata] = st.nbytes()
        return t

    x = torch.empty(shape, dtype=torch.float32, device="meta", requires_grad=input_grad)
    with flop_counter() as counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = module(x)
        out = loss_on_meta(loss, y) if loss else y
    fwd = int(counter.get_total_flops())
    bwd = 0
    if (any(p.requires_grad for p in params) or input_grad) and out.requires_grad:
        with flop_counter() as counter:
            out.backward(torch.empty_like(out))
        bwd = int(counter.get_total_flops())
    for p in params:
        p.grad = None
    xs, ys = x.untyped_storage()._cdata, y.untyped_storage()._cdata
    probe = StageProbe(fwd, bwd, tuple(int(d) for d in y.shape), y.element_size(), sum(saved.values()))
    return _BlockCount(probe, sum(v for s, v in saved.items() if s != xs), xs in saved, x.untyped_storage().nbytes(),
                       ys in saved and ys != xs, y.requires_grad)


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

    [Note: stages from blocks] A stage is counted block by block, each block once per (input
    shape, input needs a gradient, loss after it), and the blocks' counts are added: candidates
    cut the same model at every cut, so the stages overlap and share blocks (ResNet-50 on
    fog-imagenet: 23 stage counts at three batch sizes become a handful of block counts). FLOPs
    add exactly: a block's forward and backward run the same ops inside a stage as alone, its
    input needing a gradient exactly when the previous block's output does (the count carries
    ``requires_grad`` along), and only the last block of the last stage has the loss. Saved
    activations add once the storage two blocks share is counted once: the tensor between block
    ``k`` and ``k + 1`` is saved by either, both, or neither (``saved_other``, ``in_saved``,
    ``out_saved``). Tests compare stages of the zoo's models with a direct count.
    """

    def __init__(self, spec: Any, num_classes: int, seed: int) -> None:
        self.spec, self.num_classes, self.seed = spec, num_classes, seed
        self.loss_fn: Any = None  # training.loss when not cross-entropy (counted like it)
        self._models: dict[tuple, BlockModel] = {}
        self._stages: dict[tuple, BlockModel] = {}
        self._probes: dict[tuple, StageProbe] = {}
        self._per_sample: dict[tuple, tuple | None] = {}
        self._weights: dict[tuple, tuple[int, int, int, int, int]] = {}
        self._disjoint_of: dict[tuple, bool] = {}
        self._blocks: dict[tuple, _BlockCount] = {}

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
        """A stage counted block by block (see [Note: stages from blocks]); an empty stage directly."""
        if end <= start:
            return count_block(self.stage(variant, start, end), shape, input_grad,
                               (self.loss_fn or True) if loss else False).probe
        fwd = bwd = saved = 0
        grad, x = input_grad, shape
        prev_out_saved = False
        for k in range(start, end):
            b = self._block(variant, k, x, grad, loss and k == end - 1)
            fwd, bwd = fwd + b.probe.fwd, bwd + b.probe.bwd
            saved += b.saved_other + (b.in_bytes if b.in_saved and not (k > start and prev_out_saved) else 0)
            prev_out_saved, grad, x = b.out_saved, b.out_grad, b.probe.out_shape
        return StageProbe(fwd, bwd, x, b.probe.out_esize, saved)

    def _block(self, variant: tuple, k: int, shape: tuple[int, ...], input_grad: bool, loss: bool) -> _BlockCount:
        key = (variant, k, shape, input_grad, loss)
        hit = self._blocks.get(key)
        if hit is None:
            hit = self._blocks[key] = count_block(self.stage(variant, k, k + 1), shape, input_grad,
                                                  (self.loss_fn or True) if loss else False)
        return hit

    def float_elements(self, variant: tuple, start: int, end: int) -> int:
        """Floating-point elements of a stage's state dict (what FedAvg averages)."""
        return self._sizes(variant, start, end)[4]

    def weights(self, variant: tuple, start: int, end: int, trainable_count: bool = False) -> tuple[int, int, int]:
        """(parameter count, trainable parameter bytes, state-dict bytes) of a stage (with ``trainable_count``:
        the trainable parameters, as the optimizer sees them, instead of all)."""
        params, trainable, state, n_trainable, _ = self._sizes(variant, start, end)
        return (n_trainable if trainable_count else params), trainable, state

    def _sizes(self, variant: tuple, start: int, end: int) -> tuple[int, int, int, int, int]:
        """(parameters, trainable bytes, state-dict bytes, trainable parameters, floating state elements) of a
        stage: the sum of its blocks' when no two blocks of the model share a tensor, else of the stage."""
        key = (variant, start, end)
        hit = self._weights.get(key)
        if hit is None:
            if end - start > 1 and self._disjoint(variant):
                parts = [self._sizes(variant, k, k + 1) for k in range(start, end)]
                hit = tuple(sum(p[i] for p in parts) for i in range(5))  # type: ignore[assignment]
            else:
                mod = self.stage(variant, start, end)
                ps = list(mod.parameters())
                sd = mod.state_dict().values()
                hit = (sum(p.numel() for p in ps), sum(p.numel() * p.element_size() for p in ps if p.requires_grad),
                       sum(t.numel() * t.element_size() for t in sd), sum(p.numel() for p in ps if p.requires_grad),
                       sum(t.numel() for t in sd if t.is_floating_point()))
            self._weights[key] = hit
        return hit  # type: ignore[return-value]

    def _disjoint(self, variant: tuple) -> bool:
        """Whether no parameter or buffer of the variant's model belongs to two blocks (then stages add up)."""
        hit = self._disjoint_of.get(variant)
        if hit is None:
            seen: set[int] = set()
            hit = True
            for block in self.model(variant).blocks.values():
                mine = {id(t) for t in (*block.parameters(), *block.buffers())}
                hit = hit and not (mine & seen)
                seen |= mine
            self._disjoint_of[variant] = hit
        return hit


class StageFront:
    """``flexpl.plan.device_cuts.FrontCosts`` read off :class:`StageCosts`: ``front(d) -> (FLOPs, bytes)`` of one
    sample on blocks ``[0, d)`` (forward and backward, no input gradient) and the activation it sends.

    The same counts (``count_fwd_bwd`` on the front, its output's bytes), from the stage counts the
    candidates share, so the ``fpl-ecut`` rules cost no model pass of their own.
    """

    def __init__(self, costs: StageCosts, variant: tuple, input_shape: tuple[int, ...],
                 allowed: Any = None) -> None:
        self.costs, self.variant, self.input_shape, self.allowed = costs, variant, tuple(input_shape), allowed
        self._cache: dict[int, tuple[int, int]] = {}

    def __call__(self, d: int) -> tuple[int, int]:
        hit = self._cache.get(d)
        if hit is None:
            p = self.costs.probe(self.variant, 0, d, (1, *self.input_shape), False)
            n = 1
            for k in p.out_shape:
                n *= k
            hit = self._cache[d] = (p.fwd + p.bwd, n * p.out_esize)
        return hit


# ---------------------------------------------------------------------------------- batches


def batch_sizes(n: int, epochs: int, batch_size: int, max_steps: int | None, steps: int | None = None) -> list[int]:
    """Sizes of a node's batches in one round, as ``data.batching.batches`` splits its shuffles."""
    if steps is not None:  # equal_steps batching: batches of ceil(n / steps), as data.batching.node_batch
        batch_size = node_batch(n, steps)
    one = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    out = one * epochs
    return out[:max_steps] if max_steps else out
