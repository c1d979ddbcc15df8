"""Model zoo: plain ``nn.Module``s built from named, ordered blocks.

A model never knows it is distributed. ``plan.py`` cuts it by block index and keeps
state-dict keys those of the full model (``blocks.<name>.<param>``), so FedAvg matches
parameters by name and a checkpoint does not depend on the plan.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from flexpl.errors import UserError


class BlockModel(nn.Module):
    """An ordered list of named blocks; ``forward`` is a loop over them."""

    def __init__(self, blocks: Sequence[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict(list(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return x

    @property
    def block_names(self) -> list[str]:
        """Names of the blocks, in order."""
        return list(self.blocks.keys())

    def slice(self, start: int, end: int) -> BlockModel:
        """A copy of blocks ``[start, end)`` (a pipeline stage); state-dict keys stay those of this model."""
        names = self.block_names[start:end]
        return BlockModel([(n, copy.deepcopy(self.blocks[n])) for n in names])


def _out_hw(h: int, k: int, pad: int, pool: int) -> int:
    return (h + 2 * pad - k + 1) // pool


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (200, 200)) -> BlockModel:
    """Multi-layer perceptron: one block per hidden layer (Linear + ReLU), then ``out``."""
    width = 1
    for d in input_shape:
        width *= d
    blocks: list[tuple[str, nn.Module]] = []
    for i, h in enumerate(hidden):
        layers: list[nn.Module] = [nn.Flatten()] if i == 0 else []
        blocks.append((f"fc{i + 1}", nn.Sequential(*layers, nn.Linear(width, h), nn.ReLU())))
        width = h
    head: list[nn.Module] = [nn.Flatten()] if not hidden else []
    blocks.append(("out", nn.Sequential(*head, nn.Linear(width, num_classes))))
    return BlockModel(blocks)


def cnn(input_shape: tuple[int, ...], num_classes: int) -> BlockModel:
    """The FedAvg CNN (McMahan et al., AISTATS 2017): 5x5 conv 32, pool, 5x5 conv 64, pool, fc 512, fc."""
    c, h, w = input_shape
    h2, w2 = _out_hw(_out_hw(h, 5, 2, 2), 5, 2, 2), _out_hw(_out_hw(w, 5, 2, 2), 5, 2, 2)
    if h2 < 1 or w2 < 1:
        raise UserError(f"model: cnn needs inputs of at least 4x4 pixels, got {h}x{w}")
    return BlockModel([
        ("conv1", nn.Sequential(nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))),
        ("conv2", nn.Sequential(nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))),
        ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(64 * h2 * w2, 512), nn.ReLU())),
        ("out", nn.Linear(512, num_classes)),
    ])


def lenet5(input_shape: tuple[int, ...], num_classes: int) -> BlockModel:
    """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling; small inputs get padded convs."""
    c, h, w = input_shape
    pad2 = 0 if min(h, w) >= 28 else 2
    h2, w2 = _out_hw(_out_hw(h, 5, 2, 2), 5, pad2, 2), _out_hw(_out_hw(w, 5, 2, 2), 5, pad2, 2)
    if h2 < 1 or w2 < 1:
        raise UserError(f"model: lenet5 needs inputs of at least 4x4 pixels, got {h}x{w}")
    return BlockModel([
        ("conv1", nn.Sequential(nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))),
        ("conv2", nn.Sequential(nn.Conv2d(6, 16, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2))),
        ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(16 * h2 * w2, 120), nn.ReLU())),
        ("fc2", nn.Sequential(nn.Linear(120, 84), nn.ReLU())),
        ("out", nn.Linear(84, num_classes)),
    ])


ZOO: dict[str, Callable[..., BlockModel]] = {"mlp": mlp, "cnn": cnn, "lenet5": lenet5}

# Where a two-stage plan cuts each zoo model by default (index of the first block of the
# second stage): after the feature extractor, so the per-device front stays small.
DEFAULT_CUTS: dict[str, int] = {"mlp": 1, "cnn": 2, "lenet5": 2}


def _register_deep() -> None:
    """Add the deep networks of :mod:`flexpl.models.deep` (ResNet, VGG, MobileNetV2, ViT) to the zoo."""
    import functools

    from flexpl.models import deep

    for name, (builder, cut) in deep.DEEP.items():
        def make(input_shape: tuple[int, ...], num_classes: int, _b: Callable = builder, **opts: Any) -> BlockModel:
            return BlockModel(_b(input_shape, num_classes, **opts))
        ZOO[name] = functools.wraps(builder)(make)
        DEFAULT_CUTS[name] = cut


_register_deep()


def from_sequential(seq: nn.Sequential) -> BlockModel:
    """Wrap a user's ``nn.Sequential``: each child becomes one block (cut points between children)."""
    return BlockModel([(name if not name.isdigit() else f"b{name}", mod) for name, mod in seq.named_children()])


def widen_junction(block: nn.Module, branches: int) -> None:
    """Multiply the input width of the first Linear/Conv2d in ``block`` by ``branches``.

    Used by a feature junction, which concatenates the branches' features along
    dimension 1. The new layer is initialised from the current RNG state.
    """
    if branches == 1:
        return
    for parent in block.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                setattr(parent, name, nn.Linear(child.in_features * branches, child.out_features,
                                                bias=child.bias is not None))
                return
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, nn.Conv2d(child.in_channels * branches, child.out_channels,
                                                child.kernel_size, child.stride, child.padding,
                                                bias=child.bias is not None))
                return
    if isinstance(block, nn.Linear | nn.Conv2d):
        raise UserError("plan.junction: a feature junction cannot start at a bare layer; wrap it in a block")
    raise UserError("plan.junction: features junction needs a Linear or Conv2d layer in the junction block")


def build_model(spec: str | dict[str, Any], input_shape: tuple[int, ...], num_classes: int,
                *, seed: int, junction_block: int | None = None, branches: int = 1) -> BlockModel:
    """Build a zoo model with weights drawn from ``seed`` (identical for every plan).

    ``spec`` is a zoo name or ``{"name": ..., **kwargs}`` (e.g. ``{"name": "mlp", "hidden": [64]}``).
    With a features junction, the model is built for one branch's input and the junction
    block's first layer is widened ``branches`` times.
    """
    kwargs: dict[str, Any] = {}
    if isinstance(spec, dict):
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        spec = spec.get("name", "")
    if spec not in ZOO:
        raise UserError(f"model: unknown model '{spec}'; allowed: {', '.join(sorted(ZOO))}")
    torch.manual_seed(seed)
    try:
        model = ZOO[spec](tuple(input_shape), num_classes, **kwargs)
    except TypeError as exc:
        raise UserError(f"model: bad options for '{spec}': {exc}") from None
    if junction_block is not None and branches > 1:
        block = list(model.blocks.values())[junction_block]
        torch.manual_seed(seed + 1)
        widen_junction(block, branches)
    return model


def count_params(module: nn.Module) -> int:
    """Number of parameters (not buffers)."""
    return sum(p.numel() for p in module.parameters())


def state_bytes(module: nn.Module) -> int:
    """Bytes of ``module.state_dict()`` (parameters and buffers): what a sync moves."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def stage_bytes_between(model: BlockModel, start: int, end: int) -> int:
    """State-dict bytes of blocks ``[start, end)``: what syncing or relaying that stage moves."""
    return sum(state_bytes(model.blocks[n]) for n in model.block_names[start:end])
