"""Model zoo: plain ``nn.Module``s built from named, ordered blocks.

A model never knows it is distributed. ``plan.py`` cuts it by block index and keeps
state-dict keys those of the full model (``blocks.<name>.<param>``), so FedAvg matches
parameters by name and a checkpoint does not depend on the plan.

``flexpl.models.aggregate`` holds the other pieces a scenario names for training: the
aggregation rules (FedAvg, FedProx, FedAdam, ``register_aggregator``) and the training loss.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from flexpl.errors import UserError
from flexpl.io.user_code import import_object


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


# Models added with :func:`register_model`: name -> (factory, allowed cuts or None, default cut)
REGISTERED: dict[str, tuple[Callable[..., Any], tuple[int | str, ...] | None, int | str | None]] = {}


def as_block_model(obj: Any, where: str) -> BlockModel:
    """A factory's result as a :class:`BlockModel`: an ``nn.Sequential`` is cut at its children."""
    if isinstance(obj, BlockModel):
        return obj
    if isinstance(obj, nn.Sequential):
        if len(obj) == 0:
            raise UserError(f"{where}: the nn.Sequential is empty; give it at least one child")
        return from_sequential(obj)
    raise UserError(f"{where}: returned {type(obj).__name__}; return an nn.Sequential (cuts go between its "
                    "children) or a flexpl BlockModel")


def call_factory(fn: Callable[..., Any], input_shape: tuple[int, ...], num_classes: int, opts: dict[str, Any],
                 where: str) -> BlockModel:
    """``fn(input_shape, num_classes, **opts)``, or ``fn(**opts)`` when ``fn`` takes no shape; as a BlockModel."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    args: tuple[Any, ...] = (tuple(input_shape), num_classes)
    if sig is not None:
        try:
            sig.bind(*args, **opts)
        except TypeError:
            try:
                sig.bind(**opts)
                args = ()
            except TypeError as exc:
                raise UserError(f"{where}: bad options {sorted(opts)}: {exc}") from None
    return as_block_model(fn(*args, **opts), where)


def register_model(name: str, fn: Callable[..., Any], *, cuts: Sequence[int | str] | None = None,
                   default_cut: int | str | None = None) -> None:
    """Make ``fn`` a model the scenario can name (``model: NAME`` or ``{name: NAME, **options}``).

    ``fn(input_shape, num_classes, **options)`` (or ``fn(**options)``) returns an
    ``nn.Sequential``, cut between its children, or a :class:`BlockModel`. ``cuts``: the
    block indices (or child names) a plan may cut at, default every boundary; ``default_cut``:
    where a two-stage preset cuts when the scenario gives no ``plan.cut`` (default: the first
    allowed cut). Weights are drawn after ``torch.manual_seed(scenario seed)``, so every
    process builds the same model. Registering a name again replaces it.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise UserError(f"register_model: name must be a non-empty string without ':', got {name!r}")
    if not callable(fn):
        raise UserError(f"register_model: fn for '{name}' is not callable")
    if name in ZOO and name not in REGISTERED:
        raise UserError(f"register_model: '{name}' is a built-in model; choose another name")
    cut_list = tuple(cuts) if cuts is not None else None
    if default_cut is None and cut_list:
        default_cut = cut_list[0]
    REGISTERED[name] = (fn, cut_list, default_cut)

    def make(input_shape: tuple[int, ...], num_classes: int, **opts: Any) -> BlockModel:
        return call_factory(fn, input_shape, num_classes, opts, f"model '{name}'")
    ZOO[name] = make


def _registered_by_fn(fn: Any) -> tuple[Callable[..., Any], tuple[int | str, ...] | None, int | str | None] | None:
    return next((e for e in REGISTERED.values() if e[0] is fn), None)


def _resolve_cut(cut: int | str, model: BlockModel, where: str) -> int:
    if isinstance(cut, int) and not isinstance(cut, bool):
        return cut
    names = model.block_names
    for cand in (str(cut), f"b{cut}"):
        if cand in names:
            return names.index(cand)
    raise UserError(f"{where}: no block named {cut!r}; blocks are {', '.join(names)}")


def model_cuts(spec: str | dict[str, Any], model: BlockModel) -> tuple[int | None, list[int] | None]:
    """(default cut, allowed cuts or None for any) of the model ``spec`` names, as block indices."""
    entry = None
    if isinstance(spec, dict) and "factory" in spec:
        entry = _registered_by_fn(import_object(spec["factory"], "model.factory"))
    else:
        name = spec if isinstance(spec, str) else str(spec.get("name", ""))
        entry = REGISTERED.get(name)
        if entry is None:
            return DEFAULT_CUTS.get(name), None
    if entry is None:
        return None, None
    _, cuts, default = entry
    allowed = None if cuts is None else [_resolve_cut(c, model, "register_model cuts") for c in cuts]
    return (None if default is None else _resolve_cut(default, model, "register_model default_cut")), allowed


def default_cut(spec: str | dict[str, Any], model: BlockModel) -> int:
    """Where a two-stage preset cuts ``model`` when the plan gives no cut (at least 1, at most blocks - 1)."""
    n = len(model.block_names)
    cut = model_cuts(spec, model)[0]
    return min(cut if cut is not None else 1, n - 1)


def check_cuts(spec: str | dict[str, Any], model: BlockModel, starts: Sequence[int]) -> None:
    """Refuse a plan whose stages start at blocks the model's ``register_model(cuts=...)`` does not allow."""
    allowed = model_cuts(spec, model)[1]
    if allowed is None:
        return
    bad = [s for s in starts if s and s not in allowed]
    if bad:
        raise UserError(f"plan.cut: this model may be cut at blocks {', '.join(map(str, allowed))} only "
                        f"(register_model cuts), not {bad[0]}")


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

    ``spec`` is a zoo (or :func:`register_model`) name, ``{"name": ..., **kwargs}`` (e.g.
    ``{"name": "mlp", "hidden": [64]}``) or ``{"factory": "module:function", **kwargs}``.
    With a features junction, the model is built for one branch's input and the junction
    block's first layer is widened ``branches`` times.
    """
    kwargs: dict[str, Any] = {}
    if isinstance(spec, dict) and "factory" in spec:  # an import path: every process builds the same model
        fn = import_object(spec["factory"], "model.factory")
        torch.manual_seed(seed)
        model = call_factory(fn, input_shape, num_classes, {k: v for k, v in spec.items() if k != "factory"},
                             f"model.factory '{spec['factory']}'")
    else:
        if isinstance(spec, dict):
            kwargs = {k: v for k, v in spec.items() if k != "name"}
            spec = spec.get("name", "")
        if spec not in ZOO:
            raise UserError(f"model: unknown model '{spec}'; allowed: {', '.join(sorted(ZOO))} "
                            "(or register_model, or model: {factory: 'module:function'})")
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
