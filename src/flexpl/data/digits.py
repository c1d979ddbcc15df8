"""scikit-learn 8x8 digits (1797 images): a tiny dataset for fast runs and tests."""

from __future__ import annotations

import numpy as np

from flexpl.errors import UserError

NAME = "digits"
NUM_CLASSES = 10
N_TRAIN = 1500
N_TEST = 297
SPLIT_SEED = 0


def load_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``load_digits()`` gives them: ``(images float64 [1797,8,8], target)``.

    Read straight from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``, parsed as
    ``load_digits`` parses it, so the arrays are identical) without importing ``sklearn.datasets``,
    which takes about 2 s; ``load_digits`` itself where that file is not found.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise UserError(
            "data.dataset: 'digits' needs scikit-learn; run `pip install scikit-learn` "
            "(or `pip install flexpl[digits]`)"
        )
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
        data = np.loadtxt(path, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def load() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(train_x float32 [1500,1,8,8], train_y int64, test_x [297,1,8,8], test_y)``.

    The split is a fixed permutation (``np.random.RandomState(0)``): the first 1500
    permuted samples train, the last 297 test. Pixels are divided by 16 and then
    standardized with the train set's scalar mean and standard deviation.
    """
    images, target = load_raw()
    images = np.asarray(images, dtype=np.float64) / 16.0
    labels = np.asarray(target, dtype=np.int64)
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(labels))
    train_idx, test_idx = perm[:N_TRAIN], perm[N_TRAIN:]
    mean = images[train_idx].mean()
    std = images[train_idx].std()
    x = ((images - mean) / std).astype(np.float32)[:, None, :, :]
    return (
        np.ascontiguousarray(x[train_idx]),
        labels[train_idx],
        np.ascontiguousarray(x[test_idx]),
        labels[test_idx],
    )
