"""Lazy synthetic images, the image transform, and fog-imagenet's synthetic ImageNet shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexpl.data import load_data, load_dataset, partition, synthetic_dataset
from flexpl.errors import UserError
from tests.conftest import digits_star


def test_synthetic_is_deterministic_per_seed_and_lazy():
    a = synthetic_dataset((3, 224, 224), 1000, train=1_000_000, test=50, seed=3)
    b = synthetic_dataset((3, 224, 224), 1000, train=1_000_000, test=50, seed=3)
    c = synthetic_dataset((3, 224, 224), 1000, train=1_000_000, test=50, seed=4)
    assert a.train_x.shape == (1_000_000, 3, 224, 224) and a.input_shape == (3, 224, 224)
    assert torch.equal(a.train_y, b.train_y) and not torch.equal(a.train_y, c.train_y)
    assert int(a.train_y.max()) < 1000
    idx = np.array([999_999, 5, 5])
    assert torch.equal(a.train_x[idx], b.train_x[idx])
    assert torch.equal(a.train_x[idx][1], a.train_x[idx][2])  # a sample is the same on every read
    assert not torch.equal(a.train_x[5], c.train_x[5])
    assert not torch.equal(a.train_x[5], a.test_x[5])  # train and test draw from different streams
    assert a.train_x[3:5].shape == (2, 3, 224, 224)
    # a million samples: labels only (8 MB), no pixels
    assert a.train_y.numel() * a.train_y.element_size() == 8_000_000


def test_partitions_work_on_synthetic_data():
    d = synthetic_dataset((3, 8, 8), 10, train=2000, test=10, seed=0)
    parts = partition(d.train_y.numpy(), 5, "dirichlet", seed=0, alpha=0.5)
    assert sorted(np.concatenate(parts).tolist()) == list(range(2000))


def test_synthetic_from_a_scenario_and_refused_fields_elsewhere():
    scn = digits_star(["data.dataset=synthetic", "data.shape=[3,16,16]", "data.classes=7", "data.train=40",
                       "data.test=9"])
    d = load_data(scn.data, scn.seed)
    assert d.input_shape == (3, 16, 16) and d.num_classes == 7 and len(d.train_y) == 40 and len(d.test_y) == 9
    with pytest.raises(UserError, match="data.classes: only dataset synthetic"):
        load_data(digits_star(["data.classes=7"]).data)


def test_transform_resizes_and_repeats_channels():
    scn = digits_star(["data.transform={resize: 16, channels: 3}", "data.max_train=20"])
    d = load_data(scn.data)
    assert d.input_shape == (3, 16, 16) and d.test_x.shape[1:] == (3, 16, 16)
    assert torch.equal(d.train_x[:, 0], d.train_x[:, 2])
    plain = load_dataset("digits", max_train=20)
    # bilinear 8 -> 16 keeps the mean of each image to float round-off
    torch.testing.assert_close(d.train_x[:, 0].mean((1, 2)), plain.train_x[:, 0].mean((1, 2)), rtol=0, atol=0.05)


def test_a_resnet_trains_on_lazy_synthetic_data(tmp_path):
    scn = digits_star(["data.dataset=synthetic", "data.shape=[3,16,16]", "data.train=64", "data.test=16",
                       "model={name: resnet18, width: 0.0625, depth: 0.5}", "training.rounds=1"])
    from flexpl.sim.simulator import run

    s = run(scn).summary
    assert 0.0 <= s["final_accuracy"] <= 1.0 and s["bytes_total"] > 0


def test_fog_imagenet_is_resnet50_on_synthetic_imagenet_shapes():
    from flexpl.config.scenario import load_scenario

    scn = load_scenario("fog-imagenet", [], None, None)
    d = load_data(scn.data, scn.seed)
    assert d.input_shape == (3, 224, 224) and d.num_classes == 1000
    assert len(d.train_y) // len(scn.data_nodes) == 300


def test_the_largest_scenario_seed_draws_samples():
    """seed 2**32 - 1 (the largest a scenario takes): the per-sample generator seed no longer overflows torch's."""
    big = synthetic_dataset((1, 8, 8), 10, train=20, test=5, seed=2**32 - 1)
    x = big.train_x[np.array([0, 19])]
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    assert torch.equal(x, synthetic_dataset((1, 8, 8), 10, train=20, test=5, seed=2**32 - 1).train_x[np.array([0, 19])])
