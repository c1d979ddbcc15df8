"""The digits data set: read from scikit-learn's own file, identical to ``load_digits``, without its import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from flexpl.data import digits


def test_the_file_read_equals_load_digits_exactly():
    from sklearn.datasets import load_digits

    images, target = digits.load_raw()
    bunch = load_digits()
    assert images.dtype == bunch.images.dtype and images.shape == bunch.images.shape == (1797, 8, 8)
    assert np.array_equal(images, bunch.images)
    assert target.dtype == bunch.target.dtype and np.array_equal(target, bunch.target)


def test_the_split_is_the_documented_one():
    train_x, train_y, test_x, test_y = digits.load()
    assert train_x.shape == (1500, 1, 8, 8) and test_x.shape == (297, 1, 8, 8)
    assert train_x.dtype == np.float32 and train_y.dtype == np.int64
    assert abs(float(train_x.mean())) < 1e-5 and abs(float(train_x.std()) - 1.0) < 1e-4


def test_loading_digits_does_not_import_sklearn_datasets():
    code = ("import sys; from flexpl.data import digits; digits.load(); "
            "print('sklearn.datasets' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
