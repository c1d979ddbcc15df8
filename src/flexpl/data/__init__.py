"""Datasets (Fashion-MNIST, scikit-learn digits) and their split across data nodes."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from flexpl.data.partition import partition, summarize
from flexpl.data.synthetic import LazyImages, labels
from flexpl.errors import MissingData, UserError
from flexpl.io.user_code import import_object

DATASETS: tuple[str, ...] = ("fashion-mnist", "digits", "cifar10", "cifar100", "synthetic")

__all__ = ["DATASETS", "Dataset", "as_dataset", "clear_cache", "load_data", "load_dataset", "partition",
           "register_dataset", "summarize", "synthetic_dataset", "transform"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A normalized image classification dataset held in memory.

    Tensors may be shared with the in-process cache: do not modify them in place.
    """

    name: str
    train_x: torch.Tensor  # float32 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Return the shape of one sample, ``(C, H, W)``."""
        return tuple(int(d) for d in self.train_x.shape[1:])


@functools.lru_cache(maxsize=8)
def _load_full(name: str, _env: tuple[str | None, ...]) -> Dataset:
    """Load the whole dataset ``name`` (cached per name and data-location environment)."""
    if name in ("cifar10", "cifar100"):
        from flexpl.data import cifar

        tx, ty, vx, vy = cifar.load(name)
        return Dataset(name=name, train_x=torch.from_numpy(tx), train_y=torch.from_numpy(ty),
                       test_x=torch.from_numpy(vx), test_y=torch.from_numpy(vy),
                       num_classes=cifar.SPECS[name].num_classes)
    if name == "fashion-mnist":
        from flexpl.data import fashion_mnist as module
    else:
        from flexpl.data import digits as module
    tx, ty, vx, vy = module.load()
    return Dataset(
        name=name,
        train_x=torch.from_numpy(tx),
        train_y=torch.from_numpy(ty),
        test_x=torch.from_numpy(vx),
        test_y=torch.from_numpy(vy),
        num_classes=module.NUM_CLASSES,
    )


def clear_cache() -> None:
    """Forget the datasets cached by :func:`load_dataset`."""
    _load_full.cache_clear()


def _check_limit(field: str, value: int | None) -> None:
    """Raise UserError unless ``value`` is None or a positive integer."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"data.{field}: must be a positive integer or null, got {value!r}")


# Datasets added with :func:`register_dataset`: name -> loader
REGISTERED: dict[str, Callable[..., Any]] = {}


def register_dataset(name: str, fn: Callable[..., Any]) -> None:
    """Make ``fn`` a dataset the scenario can name (``data.dataset: NAME``).

    ``fn(**options)`` (given ``seed=`` too when it takes one) returns a :class:`Dataset`, or
    ``(train_x, train_y, test_x, test_y)`` tensors or arrays (``num_classes`` = largest label + 1),
    optionally with ``num_classes`` as a fifth item. ``data.max_train``/``max_test`` apply.
    For the dist backend (fresh processes) name it by import path instead:
    ``data.dataset: {factory: "module:function", **options}``.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise UserError(f"register_dataset: name must be a non-empty string without ':', got {name!r}")
    if name.strip().lower() in DATASETS:
        raise UserError(f"register_dataset: '{name}' is a built-in dataset; choose another name")
    if not callable(fn):
        raise UserError(f"register_dataset: fn for '{name}' is not callable")
    REGISTERED[name] = fn


def as_dataset(obj: Any, name: str, where: str = "data.dataset") -> Dataset:
    """A loader's result as a :class:`Dataset` (see :func:`register_dataset` for what it may return)."""
    import numpy as np

    if isinstance(obj, Dataset):
        return obj
    if isinstance(obj, dict):
        obj = tuple(obj.get(k) for k in ("train_x", "train_y", "test_x", "test_y", "num_classes"))
        obj = obj if obj[-1] is not None else obj[:4]
    if not isinstance(obj, tuple | list) or len(obj) not in (4, 5):
        raise UserError(f"{where}: the loader returned {type(obj).__name__}; return a flexpl Dataset or "
                        "(train_x, train_y, test_x, test_y[, num_classes])")

    def tensor(v: Any, dtype: torch.dtype) -> torch.Tensor:
        return (v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))).to(dtype)

    tx, vx = tensor(obj[0], torch.float32), tensor(obj[2], torch.float32)
    ty, vy = tensor(obj[1], torch.int64), tensor(obj[3], torch.int64)
    for a, b, what in ((tx, ty, "train"), (vx, vy, "test")):
        if b.dim() != 1 or a.dim() < 2 or a.shape[0] != b.shape[0]:
            raise UserError(f"{where}: {what} samples {tuple(a.shape)} and labels {tuple(b.shape)} do not match; "
                            "give x [N, ...] and integer labels y [N]")
    classes = int(obj[4]) if len(obj) == 5 else int(max(int(ty.max()), int(vy.max()) if len(vy) else 0)) + 1
    return Dataset(name=name, train_x=tx, train_y=ty, test_x=vx, test_y=vy, num_classes=classes)


def _load_custom(fn: Callable[..., Any], opts: dict[str, Any], seed: int, name: str, where: str) -> Dataset:
    import inspect

    try:
        takes_seed = "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_seed = False
    kwargs = dict(opts)
    if takes_seed and "seed" not in kwargs:
        kwargs["seed"] = seed
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as exc:
        raise UserError(f"{where}: bad options {sorted(opts)}: {exc}") from None
    except ValueError:
        pass
    return as_dataset(fn(**kwargs), name, where)


def load_dataset(
    name: str | dict[str, Any], *, max_train: int | None = None, max_test: int | None = None, seed: int = 0
) -> Dataset:
    """Load dataset ``name`` ("fashion-mnist" or "digits"), optionally keeping the first N samples.

    ``max_train``/``max_test`` keep the first N train/test samples (deterministic).
    Loaded datasets are cached in-process. ``name`` may also be a :func:`register_dataset`
    name or ``{"factory": "module:function", **options}`` (called with ``seed`` if it takes one).
    """
    if isinstance(name, dict) or (isinstance(name, str) and name in REGISTERED):
        _check_limit("max_train", max_train)
        _check_limit("max_test", max_test)
        if isinstance(name, dict):
            fn = import_object(name.get("factory"), "data.dataset.factory")
            opts = {k: v for k, v in name.items() if k != "factory"}
            label, where = str(name.get("factory")), "data.dataset.factory"
        else:
            fn, opts, label, where = REGISTERED[name], {}, name, f"data.dataset '{name}'"
        full = _load_custom(fn, opts, seed, label, where)
        if max_train is None and max_test is None:
            return full
        return Dataset(name=full.name, train_x=full.train_x[:max_train], train_y=full.train_y[:max_train],
                       test_x=full.test_x[:max_test], test_y=full.test_y[:max_test], num_classes=full.num_classes)
    key = str(name).strip().lower() if isinstance(name, str) else name
    if key not in DATASETS:
        raise UserError(f"data.dataset: unknown dataset {name!r}; allowed: {', '.join((*DATASETS, *REGISTERED))} "
                        "(or register_dataset, or data.dataset: {factory: 'module:function'})")
    _check_limit("max_train", max_train)
    _check_limit("max_test", max_test)
    if key == "synthetic":
        return synthetic_dataset(train=max_train or 1000, test=max_test or 200)
    env = tuple(os.environ.get(v) for v in ("FLEXPL_DATA", "XDG_CACHE_HOME", "HOME"))
    full = _load_full(key, env if key in ("fashion-mnist", "cifar10", "cifar100") else ())
    if max_train is None and max_test is None:
        return full
    return Dataset(
        name=full.name,
        train_x=full.train_x[:max_train],
        train_y=full.train_y[:max_train],
        test_x=full.test_x[:max_test],
        test_y=full.test_y[:max_test],
        num_classes=full.num_classes,
    )


def synthetic_dataset(shape: tuple[int, ...] = (3, 32, 32), classes: int = 10, train: int = 1000, test: int = 200,
                      seed: int = 0) -> Dataset:
    """Seeded synthetic images generated lazily per index (:mod:`flexpl.data.synthetic`)."""
    ty, vy = labels(train, classes, seed, 0), labels(test, classes, seed, 1)
    return Dataset(name="synthetic", train_x=LazyImages(train, shape, ty, seed, 0, classes),  # type: ignore[arg-type]
                   train_y=ty, test_x=LazyImages(test, shape, vy, seed, 1, classes),  # type: ignore[arg-type]
                   test_y=vy, num_classes=classes)


def transform(data: Dataset, resize: int | None = None, channels: int | None = None) -> Dataset:
    """Resize images to ``resize`` x ``resize`` (bilinear) and/or repeat a grey channel to ``channels``.

    This is how Fashion-MNIST (1x28x28) feeds networks built for 3x32x32 inputs:
    ``data.transform: {resize: 32, channels: 3}``. The channel repeat is a view (no copy).
    """
    import torch.nn.functional as F

    def one(x: torch.Tensor) -> torch.Tensor:
        if resize is not None and tuple(x.shape[2:]) != (resize, resize):
            x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
        if channels is not None and x.shape[1] != channels:
            if x.shape[1] != 1:
                raise UserError(f"data.transform.channels: only 1-channel images can be repeated to "
                                f"{channels} channels; {data.name} has {x.shape[1]}")
            x = x.expand(-1, channels, -1, -1)
        return x

    if resize is None and channels is None:
        return data
    if not isinstance(data.train_x, torch.Tensor):
        raise UserError(f"data.transform: not available for {data.name}; give the shape you want instead")
    return Dataset(name=data.name, train_x=one(data.train_x), train_y=data.train_y, test_x=one(data.test_x),
                   test_y=data.test_y, num_classes=data.num_classes)


def load_data(cfg: object, seed: int = 0) -> Dataset:
    """The dataset a scenario's ``data`` section names: slices, synthetic options and transform applied.

    ``cfg`` is a :class:`flexpl.config.scenario.DataCfg`. ``synthetic`` takes ``shape``, ``classes``,
    ``train``, ``test`` (and the scenario's seed); other datasets refuse those fields.
    """
    name = cfg.dataset
    syn = {k: getattr(cfg, k, None) for k in ("shape", "classes", "train", "test")}
    if name == "synthetic":
        shape = tuple(syn["shape"] or (3, 32, 32))
        if len(shape) != 3:
            raise UserError(f"data.shape: synthetic images need [C, H, W], got {list(shape)}")
        data = synthetic_dataset(shape, syn["classes"] or 10, syn["train"] or 1000, syn["test"] or 200, seed)
        mt, mv = getattr(cfg, "max_train", None), getattr(cfg, "max_test", None)
        if mt is not None or mv is not None:
            data = synthetic_dataset(shape, data.num_classes, min(mt or len(data.train_y), len(data.train_y)),
                                     min(mv or len(data.test_y), len(data.test_y)), seed)
    else:
        given = [k for k, v in syn.items() if v is not None]
        if given:
            raise UserError(f"data.{given[0]}: only dataset synthetic takes {given[0]}; remove it for {name}")
        limits = {"max_train": getattr(cfg, "max_train", None), "max_test": getattr(cfg, "max_test", None)}
        fallback = getattr(cfg, "fallback", None)
        try:
            data = load_dataset(name, seed=seed, **limits)
        except MissingData as exc:
            if fallback is None:
                raise
            import sys

            print(f"flexpl: note: {exc.args[0].split(';')[0]}; using {fallback.dataset} (data.fallback) instead",
                  file=sys.stderr)
            data = load_dataset(fallback.dataset, **limits)
            if fallback.transform is not None:
                data = transform(data, fallback.transform.resize, fallback.transform.channels)
    tf = getattr(cfg, "transform", None)
    if tf is not None:
        data = transform(data, tf.resize, tf.channels)
    return data
