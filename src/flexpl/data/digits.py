"""scikit-learn 8x8 digits (1797 images): a tiny dataset for fast runs and tests."""

from __future__ import annotations

import numpy as np

from flexpl.errors import UserError

NAME = "digits"
NUM_CLASSES = 10
N_TRAIN = 1500
N_TEST = 297
SPLIT_SEED = 0


def load() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(train_x float32 [1500,1,8,8], train_y int64, test_x [297,1,8,8], test_y)``.

    The split is a fixed permutation (``np.random.RandomState(0)``): the first 1500
    permuted samples train, the last 297 test. Pixels are divided by 16 and then
    standardized with the train set's scalar mean and standard deviation.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise UserError(
            "data.dataset: 'digits' needs scikit-learn; run `pip install scikit-learn` "
            "(or `pip install flexpl[digits]`)"
        ) from exc
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
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
