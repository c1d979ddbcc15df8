"""Synthetic images for ImageNet-scale cost studies, generated lazily per index.

``{dataset: synthetic, shape: [3, 224, 224], classes: 1000, train: N, test: M}``: labels
are drawn once from a seeded generator (8 bytes a sample, so partitions work as on real
data); sample ``i``'s pixels are drawn only when it is indexed, from a generator seeded
by ``(seed, split, i)``, so a million samples cost no memory and a sample is the same
every time it is read. Pixels are standard normal plus a small offset that depends on
the label, so a network can learn something; accuracy is not the point of this data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class LazyImages:
    """A read-only ``[N, C, H, W]`` float32 "tensor" whose rows are generated when indexed.

    Supports what the engine and planner use: ``shape``, ``dtype``, ``len``,
    ``element_size()`` and indexing by an int, a slice, or an integer array/tensor/list
    (which returns a real tensor).
    """

    def __init__(self, n: int, shape: Sequence[int], labels: torch.Tensor, seed: int, split: int,
                 num_classes: int) -> None:
        self.n = int(n)
        self.sample_shape = tuple(int(d) for d in shape)
        self.labels = labels
        self.seed, self.split, self.num_classes = int(seed), int(split), int(num_classes)
        self.dtype = torch.float32

    @property
    def shape(self) -> torch.Size:
        """``(N, C, H, W)``."""
        return torch.Size((self.n, *self.sample_shape))

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return 1 + len(self.sample_shape)

    def __len__(self) -> int:
        return self.n

    def element_size(self) -> int:
        """Bytes per element (float32)."""
        return 4

    def sample(self, i: int) -> torch.Tensor:
        """Sample ``i`` (0 <= i < N), the same on every call."""
        if not 0 <= i < self.n:
            raise IndexError(f"sample {i} out of range 0..{self.n - 1}")
        # modulo 2**63: the same seed as before wherever it fit, and a large scenario seed no longer
        # overflows torch's 64-bit seed
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.split) * 2_147_483_647 + i) % 2**63)
        x = torch.randn(self.sample_shape, generator=g)
        y = int(self.labels[i])
        # a label-dependent offset on one channel: learnable, cheap
        x[y % self.sample_shape[0]] += 0.5 * ((y * 37) % self.num_classes) / max(self.num_classes - 1, 1)
        return x

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(index, int | np.integer):
            return self.sample(int(index) + (self.n if index < 0 else 0))
        if isinstance(index, slice):
            ids = range(*index.indices(self.n))
        else:
            ids = [int(i) for i in (index.tolist() if hasattr(index, "tolist") else index)]
        out = torch.empty((len(ids), *self.sample_shape), dtype=self.dtype)
        for k, i in enumerate(ids):
            out[k] = self.sample(i)
        return out


def labels(n: int, classes: int, seed: int, split: int) -> torch.Tensor:
    """``n`` labels in ``0..classes-1`` from a generator seeded by ``(seed, split)``."""
    return torch.from_numpy(np.random.default_rng([seed, split]).integers(0, classes, size=n, dtype=np.int64))
