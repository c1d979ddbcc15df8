"""Datasets (Fashion-MNIST, scikit-learn digits) and their split across data nodes."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from flexpl.data.partition import partition, summarize
from flexpl.errors import UserError

DATASETS: tuple[str, ...] = ("fashion-mnist", "digits")

__all__ = ["DATASETS", "Dataset", "clear_cache", "load_dataset", "partition", "summarize"]


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


def load_dataset(
    name: str, *, max_train: int | None = None, max_test: int | None = None
) -> Dataset:
    """Load dataset ``name`` ("fashion-mnist" or "digits"), optionally keeping the first N samples.

    ``max_train``/``max_test`` keep the first N train/test samples (deterministic).
    Loaded datasets are cached in-process.
    """
    key = str(name).strip().lower() if isinstance(name, str) else name
    if key not in DATASETS:
        raise UserError(f"data.dataset: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    _check_limit("max_train", max_train)
    _check_limit("max_test", max_test)
    env = tuple(os.environ.get(v) for v in ("FLEXPL_DATA", "XDG_CACHE_HOME", "HOME"))
    full = _load_full(key, env if key == "fashion-mnist" else ())
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
