"""Tests for flexpl.data.partition: iid, Dirichlet and shards splits, size weights, errors, summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flexpl.data import partition, summarize
from flexpl.errors import UserError

LABELS = np.random.default_rng(7).permutation(np.repeat(np.arange(10), 103))


def covers_once(parts: list[np.ndarray], n: int) -> bool:
    joined = np.concatenate(parts)
    return len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
def test_partition_covers_and_is_deterministic(kind: str) -> None:
    parts = partition(LABELS, 7, kind, seed=3)
    assert len(parts) == 7
    assert covers_once(parts, len(LABELS))
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0) and len(p) >= 1
    same = partition(LABELS, 7, kind, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, same))
    other = partition(LABELS, 7, kind, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_is_even() -> None:
    sizes = [len(p) for p in partition(LABELS, 7, "iid", seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_shards_give_few_labels() -> None:
    parts = partition(LABELS, 10, "shards", seed=0, shards_per_node=2)
    for info in summarize(LABELS, parts, 10):
        assert sum(h > 0 for h in info["histogram"]) <= 4


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
def test_sizes_weights(kind: str) -> None:
    parts = partition(LABELS, 3, kind, seed=1, sizes_weights=[1, 1, 8], alpha=100.0)
    assert covers_once(parts, len(LABELS))
    assert len(parts[2]) > len(parts[0]) + len(parts[1])


def test_dirichlet_small_alpha_is_more_skewed_than_iid() -> None:
    def mean_entropy(kind: str, **kw: float) -> float:
        parts = partition(LABELS, 10, kind, seed=0, **kw)
        return float(np.mean([s["entropy_bits"] for s in summarize(LABELS, parts, 10)]))

    iid = mean_entropy("iid")
    skewed = mean_entropy("dirichlet", alpha=0.1)
    assert iid > 3.0
    assert skewed < iid - 1.0
    assert mean_entropy("dirichlet", alpha=1000.0) > skewed


def test_dirichlet_respects_min_size() -> None:
    parts = partition(LABELS, 20, "dirichlet", seed=2, alpha=0.3, min_size=10)
    assert min(len(p) for p in parts) >= 10 and covers_once(parts, len(LABELS))


@pytest.mark.slow
def test_dirichlet_min_samples_tops_up_when_no_draw_fits() -> None:
    """1,000 nodes at alpha 0.1 (mlp-1000): redraws cannot give every node a sample; the top-up does, seeded."""
    labels = np.random.default_rng(3).permutation(np.repeat(np.arange(10), 600))
    for min_size in (1, 3):
        parts = partition(labels, 1000, "dirichlet", seed=0, alpha=0.1, min_size=min_size)
        assert min(len(p) for p in parts) >= min_size and covers_once(parts, len(labels))
        again = partition(labels, 1000, "dirichlet", seed=0, alpha=0.1, min_size=min_size)
        assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    # still label-skewed: topping up moves a few samples, not the draw
    mean_bits = np.mean([s["entropy_bits"] for s in summarize(labels, parts, 10)])
    assert mean_bits < 1.5


def test_dirichlet_min_samples_keeps_a_draw_that_fits() -> None:
    """When a draw already gives every node min_samples, the rule changes nothing (same as min_size 0)."""
    a = partition(LABELS, 5, "dirichlet", seed=4, alpha=1.0, min_size=0)
    b = partition(LABELS, 5, "dirichlet", seed=4, alpha=1.0, min_size=1)
    assert min(len(p) for p in a) >= 1
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_partition_errors() -> None:
    with pytest.raises(UserError, match="data.partition: 5 nodes but only 4 samples"):
        partition(np.zeros(4, np.int64), 5, "iid", seed=0)
    with pytest.raises(UserError, match=r"data\.partition\.kind.*iid, dirichlet, shards"):
        partition(LABELS, 2, "random", seed=0)
    for alpha in (0, -1.0, float("nan")):
        with pytest.raises(UserError, match=r"data\.partition\.alpha"):
            partition(LABELS, 2, "dirichlet", seed=0, alpha=alpha)
    with pytest.raises(UserError, match=r"data\.partition\.min_samples: 10 data nodes x 200 samples"):
        partition(LABELS, 10, "dirichlet", seed=0, alpha=0.5, min_size=200)
    with pytest.raises(UserError, match=r"data\.partition\.shards_per_node"):
        partition(np.arange(10) % 2, 4, "shards", seed=0, shards_per_node=3)
    with pytest.raises(UserError, match=r"data\.partition\.sizes_weights"):
        partition(LABELS, 3, "iid", seed=0, sizes_weights=[1.0, 2.0])
    with pytest.raises(UserError, match=r"data\.partition\.sizes_weights"):
        partition(LABELS, 2, "iid", seed=0, sizes_weights=[1.0, 0.0])
    with pytest.raises(UserError, match="at least 1 data node"):
        partition(LABELS, 0, "iid", seed=0)


def test_summarize() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    info = summarize(
        labels,
        [np.array([0, 2]), np.array([0, 1]), np.array([4, 5, 6, 7]), np.array([], np.int64)],
        4,
    )
    assert [s["samples"] for s in info] == [2, 2, 4, 0]
    assert info[0]["histogram"] == [1, 1, 0, 0] and info[2]["histogram"] == [0, 0, 4, 0]
    assert math.isclose(info[0]["entropy_bits"], 1.0)
    assert info[1]["entropy_bits"] == 0.0 and info[2]["entropy_bits"] == 0.0
    assert info[3]["entropy_bits"] == 0.0 and isinstance(info[0]["entropy_bits"], float)
