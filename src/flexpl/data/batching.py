"""Seeded sampling of a run: stable seeds, each round's clients, each node's batches.

Every random choice of a round is drawn from a generator seeded by :func:`mix_seed` of
the scenario seed and what the choice is for (round, epoch, node, ...), never from a
shared global stream: so a run's choices do not depend on the order the work happens in,
on the executor, or on whether the run was resumed from a checkpoint.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Protocol

import numpy as np
import torch


class Shuffled(Protocol):
    """What :func:`batches` needs of a node's samples: how many, and which shuffling stream they follow."""

    order_key: int  # equal keys -> equal orders

    def __len__(self) -> int: ...


def mix_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from several parts (seed, round, epoch, node ...)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def equal_steps(counts: Iterable[int], batch_size: int) -> int:
    """Steps per epoch of every data node under ``training.batching: equal_steps``: the mean node's batches."""
    counts = list(counts)
    mean = sum(counts) / max(len(counts), 1)
    return max(1, math.ceil(mean / batch_size))


def node_batch(samples: int, steps: int) -> int:
    """A node's batch size under equal_steps batching: ``ceil(samples / steps)`` (at least 1)."""
    return max(1, math.ceil(samples / steps))


def batches(nd: Shuffled, seed: int, rnd: int, epochs: int, batch_size: int,
            max_steps: int | None = None, steps: int | None = None) -> list[torch.Tensor]:
    """Index batches of one node for one round: a fresh shuffle per epoch, drawn from (seed, round, epoch, key).

    Each epoch is cut into batches of ``batch_size``, or with ``steps`` (equal_steps batching) of
    :func:`node_batch` (at most ``steps`` batches; a node with the mean node's samples keeps ``batch_size``).
    """
    out: list[torch.Tensor] = []
    for e in range(epochs):
        g = torch.Generator().manual_seed(mix_seed(seed, rnd, e, nd.order_key))
        perm = torch.randperm(len(nd), generator=g)
        out.extend(perm.split(batch_size if steps is None else node_batch(len(perm), steps)))
    return out[:max_steps] if max_steps else out


def select_clients(nodes: list[str], fraction: float, seed: int, rnd: int) -> list[str]:
    """The data nodes taking part in round ``rnd`` (a seeded sample; all when fraction is 1)."""
    k = max(1, round(fraction * len(nodes)))
    if k >= len(nodes):
        return list(nodes)
    rng = np.random.default_rng(mix_seed(seed, rnd, "select"))
    chosen = set(rng.choice(len(nodes), size=k, replace=False).tolist())
    return [n for i, n in enumerate(nodes) if i in chosen]
