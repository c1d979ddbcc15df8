"""The training samples of one data node, read from the whole training set (see :class:`NodeData`)."""

from __future__ import annotations

import torch

from flexpl.sim.device import take


class NodeData:
    """Training samples held by one data node (already tensorized).

    With ``index``, ``x`` is read as rows ``index`` of the whole training set (no copy of the
    samples per node: set-up in proportion to the work); ``x`` then gives a copy of the node's
    rows, and :meth:`batch` reads a batch straight from the whole set.
    """

    def __init__(self, name: str, x: torch.Tensor, y: torch.Tensor, order_key: int,
                 index: torch.Tensor | None = None) -> None:
        self.name = name
        self._y: torch.Tensor | None = y  # this node's labels (small: always its own)
        self.order_key = order_key  # which shuffling stream it follows (equal keys -> equal orders)
        self._index = index
        self._x = x
        self._rows: tuple[torch.Tensor, torch.Tensor, int, int] | None = None

    @classmethod
    def rows(cls, name: str, x: torch.Tensor, y: torch.Tensor, order_key: int, flat: torch.Tensor,
             start: int, stop: int) -> NodeData:
        """The node holding rows ``flat[start:stop]`` of the whole training set ``(x, y)``.

        Nothing is made per node until it is used: its index and labels are views and
        copies made on first use (set-up in proportion to the clients sampled, not all).
        """
        nd = cls.__new__(cls)
        nd.name, nd._x, nd._y, nd.order_key, nd._index = name, x, None, order_key, None
        nd._rows = (flat, y, start, stop)
        return nd

    @property
    def index(self) -> torch.Tensor | None:
        """Positions of this node's samples in the whole training set (None: ``x`` holds them itself)."""
        if self._index is None and self._rows is not None:
            flat, _, start, stop = self._rows
            self._index = flat[start:stop]
        return self._index

    @property
    def y(self) -> torch.Tensor:
        """This node's labels."""
        if self._y is None:
            self._y = self._rows[1][self.index]
        return self._y

    @y.setter
    def y(self, value: torch.Tensor) -> None:
        self._y = value

    @property
    def x(self) -> torch.Tensor:
        """This node's samples (a copy of its rows when they are read from the whole set)."""
        return self._x if self.index is None else self._x[self.index]

    @x.setter
    def x(self, value: torch.Tensor) -> None:
        y = self.y  # its labels stay its own
        self._x, self._index, self._rows, self._y = value, None, None, y

    def batch(self, idx: torch.Tensor, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and labels at positions ``idx`` of this node (what ``(x[idx], y[idx])`` gives), on ``device``
        (None: where they are; to CUDA through pinned memory, :func:`flexpl.sim.device.take`)."""
        if getattr(self._x, "is_meta", False):  # shapes only: made directly (indexing a meta tensor runs a slow Python kernel)
            n = (int(idx.shape[0]),)
            return (torch.empty(n + tuple(self._x.shape[1:]), dtype=self._x.dtype, device="meta"),
                    torch.empty(n + tuple(self.y.shape[1:]), dtype=self.y.dtype, device="meta"))
        if self.index is None:
            return take(self._x, idx, device), take(self.y, idx, device)
        rows = self.index[idx]
        return take(self._x, rows, device), (take(self.y, idx, device) if self._y is not None
                                             else take(self._rows[1], rows, device))

    def meta(self) -> NodeData:
        """The same node on the meta device (shapes only)."""
        shape = (len(self),) + tuple(self._x.shape[1:])
        return NodeData(self.name, torch.empty(shape, dtype=self._x.dtype, device="meta"),
                        torch.empty(self.y.shape, dtype=self.y.dtype, device="meta"), self.order_key)

    def __len__(self) -> int:
        if self._rows is not None:
            return self._rows[3] - self._rows[2]
        return int(self.y.shape[0])
