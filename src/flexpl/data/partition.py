"""Split a dataset's samples across data nodes: iid, Dirichlet label skew, or label shards."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from flexpl.errors import UserError

KINDS: tuple[str, ...] = ("iid", "dirichlet", "shards")
DIRICHLET_TRIES = 100


def _is_int(value: object) -> bool:
    """True for Python or numpy integers (not bools)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _apportion(total: int, weights: np.ndarray, minimum: int = 1) -> np.ndarray:
    """Split ``total`` into integer counts proportional to ``weights``, each >= ``minimum``.

    Largest-remainder rounding; requires ``total >= minimum * len(weights)``.
    """
    n = len(weights)
    spare = total - minimum * n
    share = spare * weights / weights.sum()
    counts = np.floor(share).astype(np.int64)
    left = spare - int(counts.sum())
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[:left]] += 1
    return counts + minimum


def _check_weights(sizes_weights: list[float] | None, n_nodes: int) -> np.ndarray | None:
    """Validate ``sizes_weights`` and return them as a float array (or None)."""
    if sizes_weights is None:
        return None
    w = np.asarray(sizes_weights, dtype=np.float64)
    if w.ndim != 1 or len(w) != n_nodes:
        raise UserError(
            f"data.partition.sizes_weights: needs one weight per data node ({n_nodes}), got {len(w.ravel())}"
        )
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise UserError("data.partition.sizes_weights: every weight must be a finite number > 0")
    return w


def _iid(n: int, n_nodes: int, rng: np.random.Generator, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle all indices and cut them into consecutive runs, even (``np.array_split``'s sizes) or
    proportional to ``w``; returns the shuffled indices and each node's count."""
    perm = rng.permutation(n)
    if w is not None:
        return perm, _apportion(n, w)
    counts = np.full(n_nodes, n // n_nodes, dtype=np.int64)
    counts[: n % n_nodes] += 1
    return perm, counts


def _top_up(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Give each node below ``min_size`` samples drawn at random from the node holding the most.

    Nodes are filled in index order; a donor never drops below ``min_size`` itself. Requires
    ``sum(len(p)) >= min_size * len(parts)`` (checked by the caller).
    """
    parts = [np.asarray(p, dtype=np.int64) for p in parts]
    for node in range(len(parts)):
        while len(parts[node]) < min_size:
            donor = int(np.argmax([len(p) for p in parts]))
            take = min(min_size - len(parts[node]), len(parts[donor]) - min_size)
            moved = rng.choice(len(parts[donor]), size=take, replace=False)
            keep = np.ones(len(parts[donor]), dtype=bool)
            keep[moved] = False
            parts[node] = np.concatenate([parts[node], parts[donor][moved]])
            parts[donor] = parts[donor][keep]
    return parts


def _dirichlet(
    labels: np.ndarray,
    n_nodes: int,
    rng: np.random.Generator,
    alpha: float,
    min_size: int,
    w: np.ndarray | None,
) -> list[np.ndarray]:
    """Per class, split the shuffled indices with Dirichlet(alpha) proportions across nodes.

    The rule for ``min_size`` (``data.partition.min_samples``): the whole draw is repeated (same
    generator, so seeded) up to ``DIRICHLET_TRIES`` times until every node holds at least
    ``min_size`` samples, as common FL code does (e.g. NIID-Bench's ``min_require_size``). If no
    draw does (many nodes and a small alpha: with 1,000 nodes and alpha 0.1 a few nodes get no
    sample in almost every draw), the draw with the fewest missing samples is kept and each short
    node is topped up with random samples from the largest node (:func:`_top_up`).
    """
    if min_size * n_nodes > len(labels):
        raise UserError(
            f"data.partition.min_samples: {n_nodes} data nodes x {min_size} samples is more than the "
            f"{len(labels)} training samples; lower min_samples, use fewer data nodes or more data"
        )
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    best: list[np.ndarray] | None = None
    best_short = -1
    nodes = np.arange(n_nodes)
    for _ in range(DIRICHLET_TRIES):
        # each class's shuffled indices cut into n_nodes runs; a node's part is its runs in class order
        # (one stable sort by node, not n_nodes x classes little arrays: 1,000 nodes redraw in milliseconds)
        order, owner = [], []
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(n_nodes, alpha))
            if w is not None:
                p = p * w
            if not np.all(np.isfinite(p)) or p.sum() <= 0:  # underflow with tiny alpha
                p = np.zeros(n_nodes)
                p[rng.integers(n_nodes)] = 1.0
            p = p / p.sum()
            cuts = np.clip(np.round(np.cumsum(p)[:-1] * len(idx)).astype(np.int64), 0, len(idx))
            order.append(idx)
            owner.append(np.repeat(nodes, np.diff(cuts, prepend=0, append=len(idx))))
        owners = np.concatenate(owner)
        counts = np.bincount(owners, minlength=n_nodes)
        short = int(np.maximum(0, min_size - counts).sum())
        if short == 0 or best is None or short < best_short:
            flat = np.concatenate(order)[np.argsort(owners, kind="stable")]
            parts = np.split(flat, np.cumsum(counts)[:-1])
            if short == 0:
                return parts
            best, best_short = parts, short
    assert best is not None
    return _top_up(best, min_size, rng)


def _shards(
    labels: np.ndarray,
    n_nodes: int,
    rng: np.random.Generator,
    shards_per_node: int,
    w: np.ndarray | None,
) -> list[np.ndarray]:
    """Sort by label, cut into shards and deal ``shards_per_node`` random shards to each node."""
    n = len(labels)
    n_shards = n_nodes * shards_per_node
    if n_shards > n:
        raise UserError(
            f"data.partition.shards_per_node: {n_nodes} nodes x {shards_per_node} shards = "
            f"{n_shards} shards but only {n} samples; use fewer shards per node or fewer data nodes"
        )
    order = np.argsort(labels, kind="stable")
    size = n // n_shards
    shards = [order[i * size : (i + 1) * size] for i in range(n_shards - 1)]
    shards.append(order[(n_shards - 1) * size :])  # leftover samples go to the last shard
    perm = rng.permutation(n_shards)
    counts = np.full(n_nodes, shards_per_node) if w is None else _apportion(n_shards, w)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [
        np.concatenate([shards[s] for s in perm[bounds[k] : bounds[k + 1]]]) for k in range(n_nodes)
    ]


def partition(
    labels: np.ndarray,
    n_nodes: int,
    kind: str,
    *,
    seed: int,
    alpha: float = 0.5,
    shards_per_node: int = 2,
    min_size: int = 1,
    sizes_weights: list[float] | None = None,
) -> list[np.ndarray]:
    """Split sample indices across ``n_nodes`` data nodes; returns one sorted int64 array per node.

    Every index ``0..len(labels)-1`` appears in exactly one node. ``kind`` is ``iid``
    (even random split), ``dirichlet`` (per-class Dirichlet(``alpha``) proportions; each
    node gets >= ``min_size`` samples, see :func:`_dirichlet` for the rule) or ``shards`` (label-sorted shards,
    ``shards_per_node`` per node). ``sizes_weights`` (one positive weight per node) makes
    node sizes roughly proportional to the weights. Deterministic for a given ``seed``.
    The arrays are views of one array (:func:`partition_flat`).
    """
    flat, offsets = partition_flat(labels, n_nodes, kind, seed=seed, alpha=alpha, shards_per_node=shards_per_node,
                                   min_size=min_size, sizes_weights=sizes_weights)
    return np.split(flat, offsets[1:-1])


def partition_flat(
    labels: np.ndarray,
    n_nodes: int,
    kind: str,
    *,
    seed: int,
    alpha: float = 0.5,
    shards_per_node: int = 2,
    min_size: int = 1,
    sizes_weights: list[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`partition` as one int64 array and ``n_nodes + 1`` offsets: node ``i`` holds ``flat[off[i]:off[i+1]]``.

    The same draw and the same samples as :func:`partition`, without one array per node
    (an IID split of 10,000 nodes is a few whole-array operations).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise UserError(f"data.partition: labels must be one-dimensional, got shape {labels.shape}")
    if kind not in KINDS:
        raise UserError(f"data.partition.kind: unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    if not _is_int(n_nodes) or n_nodes < 1:
        raise UserError(f"data.partition: need at least 1 data node, got {n_nodes!r}")
    n_nodes = int(n_nodes)
    n = len(labels)
    if n_nodes > n:
        raise UserError(
            f"data.partition: {n_nodes} nodes but only {n} samples; "
            "use fewer data nodes or a larger dataset"
        )
    if kind == "dirichlet":
        if (
            isinstance(alpha, (bool, np.bool_))
            or not isinstance(alpha, (int, float, np.integer, np.floating))
            or not math.isfinite(alpha)
            or alpha <= 0
        ):
            raise UserError(f"data.partition.alpha: must be a number > 0, got {alpha!r}")
        if not _is_int(min_size) or min_size < 0:
            raise UserError(f"data.partition.min_samples: must be an integer >= 0, got {min_size!r}")
    if kind == "shards" and (not _is_int(shards_per_node) or shards_per_node < 1):
        raise UserError(
            f"data.partition.shards_per_node: must be an integer >= 1, got {shards_per_node!r}"
        )
    if not _is_int(seed) or seed < 0:
        raise UserError(f"seed: must be an integer >= 0, got {seed!r}")
    w = _check_weights(sizes_weights, n_nodes)
    rng = np.random.default_rng(seed)
    if kind == "iid":
        cat, counts = _iid(n, n_nodes, rng, w)
    else:
        parts = (_dirichlet(labels, n_nodes, rng, float(alpha), int(min_size), w) if kind == "dirichlet"
                 else _shards(labels, n_nodes, rng, int(shards_per_node), w))
        counts = np.array([len(p) for p in parts], dtype=np.int64)
        cat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return _sort_runs(cat.astype(np.int64), counts)


def _sort_runs(cat: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each run of ``cat`` (run ``i`` has ``counts[i]`` distinct indices >= 0) in one pass; with the offsets."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    span = int(cat.max()) + 1 if len(cat) else 1
    run = np.repeat(np.arange(len(counts), dtype=np.int64) * span, counts)
    key = run + cat
    key.sort()
    key -= run
    return key, offsets


def summarize(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> list[dict]:
    """Describe each node's share: ``{"samples", "histogram" (per class), "entropy_bits"}``."""
    counts = np.array([len(p) for p in parts], dtype=np.int64)
    flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts else np.zeros(0, np.int64)
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return list(Summaries(labels, flat, offsets, num_classes))


class Summaries(Sequence):
    """:func:`summarize` of a split given as one index array and offsets (:func:`partition_flat`), made lazily.

    The label histograms of all nodes are counted in one pass on first use; each node's
    dict is made when it is read (a table shows the first few of 10,000 nodes).
    """

    def __init__(self, labels: np.ndarray, flat: np.ndarray, offsets: np.ndarray, num_classes: int) -> None:
        self._labels, self._flat, self._offsets, self._classes = np.asarray(labels), flat, offsets, num_classes
        self._hist: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def histograms(self) -> np.ndarray:
        """``[nodes, classes]`` label counts."""
        if self._hist is None:
            k, c = len(self), self._classes
            lab = self._labels[self._flat].astype(np.int64)
            if len(lab) and int(lab.max()) >= c:
                raise ValueError(f"label {int(lab.max())} >= num_classes={c}")
            node = np.repeat(np.arange(k, dtype=np.int64), np.diff(self._offsets))
            self._hist = np.bincount(node * c + lab, minlength=k * c).reshape(k, c)
        return self._hist

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        hist = self.histograms()[i]
        total = int(hist.sum())
        entropy = 0.0
        if total:
            p = hist[hist > 0] / total
            entropy = float(-(p * np.log2(p)).sum()) + 0.0
        return {"samples": total, "histogram": [int(h) for h in hist], "entropy_bits": entropy}


def validation_split(parts: list[np.ndarray], fraction: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Hold out a seeded ``fraction`` of each node's samples for validation.

    Returns ``(train_parts, val_parts)``: for node ``i``, ``round(fraction * len(parts[i]))``
    of its samples (at least one, and never all of them), drawn from a generator seeded by
    ``(seed, i)``, go to ``val_parts[i]``; the rest stay, in their original order, in
    ``train_parts[i]``. With ``fraction == 0`` nothing is held out.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"data.validation_fraction: must be in [0, 1), got {fraction!r}")
    if fraction == 0.0:
        return [np.asarray(p) for p in parts], [np.asarray(p)[:0] for p in parts]
    train, val = [], []
    for i, p in enumerate(parts):
        p = np.asarray(p)
        if len(p) < 2:
            raise UserError(f"data.validation_fraction: data node {i} holds {len(p)} sample(s), too few to hold "
                            "any out; use more data, data.partition.min_samples: 2 or validation_fraction: 0")
        k = min(max(1, round(fraction * len(p))), len(p) - 1)
        rng = np.random.default_rng([int(seed), 0x56414C, i])  # "VAL": a stream of its own
        held = np.zeros(len(p), dtype=bool)
        held[rng.choice(len(p), size=k, replace=False)] = True
        train.append(p[~held])
        val.append(p[held])
    return train, val
