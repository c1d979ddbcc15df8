"""FedAvg summed in place, client by client, for clients trained one after another on one working model.

[Note: working models] A FedAvg client whose weights and optimizer state do not outlive
the round (its stage is averaged over all replicas every round, and its optimizer is
reset on every download) needs no replica of its own: the engine keeps one working
model per stage (per worker process), loads the aggregator's weights into it before
each client trains, and adds the trained weights, times the client's FedAvg
coefficient, to one accumulator. :func:`flexpl.models.aggregate.fedavg` sums
``acc = s0 * c0; acc = acc + s1 * c1; ...`` in the order the replicas are given; the
accumulator does the very same operations in the very same order (``acc`` is written in
place, which is the same float arithmetic), so the average is bitwise the one of
``fedavg`` over materialised replicas.

Clients may finish out of that order (several worker processes, or a schedule that
visits them otherwise): a finished client whose turn has not come is kept aside (a copy
of its weights) until it has; a worker holding ``max_pending`` of those waits for the
others. Clients that take part without training (no samples) contribute the weights they
downloaded, the aggregator's. The coefficients need the round's total weight before the
first client is added: :meth:`FedAvgSum.begin` gives it (``Engine.expect_round``); without
it, every finished client is kept aside until the upload names the weights.

With ``shared=True`` the accumulator and its two counters (next position to add, next
client to claim) live in shared memory under one lock, so worker processes forked after
set-up add to one sum in turn.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext

import torch

State = Mapping[str, torch.Tensor]
# A worker process with this many finished clients waiting for their turn waits for the others.
MAX_PENDING = 8


class FedAvgSum:
    """The FedAvg accumulator of one stage for one round (see [Note: working models])."""

    def __init__(self, like: State, shared: bool = False, max_pending: int | None = None) -> None:
        """``like``: a state dict of the stage (shapes and dtypes, floating tensors only)."""
        # contiguous whatever the weights' layout (channels-last ones too): the sums are read flat
        self.acc: dict[str, torch.Tensor] = {k: torch.zeros(v.shape, dtype=v.dtype, device=v.device)
                                             for k, v in like.items()}
        self.ctl = torch.zeros(2, dtype=torch.int64)  # [next position to add, next client to claim]
        self.cond = None
        if shared:
            for t in [*self.acc.values(), self.ctl]:
                t.share_memory_()
            self.cond = mp.get_context("fork").Condition()
        self.max_pending = max_pending
        self.coef: list[float] | None = None   # FedAvg coefficient of each position (None: not known yet)
        self.weights: list[float] | None = None
        self.untrained: set[int] = set()       # positions that take part without training
        self.pending: dict[int, dict[str, torch.Tensor]] = {}  # finished, waiting for their turn (this process)
        self.n = 0

    # ------------------------------------------------------------ the round's plan

    def begin(self, weights: Sequence[float] | None, n: int, reset: bool = True) -> None:
        """A new round of ``n`` positions with FedAvg ``weights`` (None: named at :meth:`finish`).

        ``reset``: zero the shared counters (the process that owns the round; workers pass False).
        """
        self.n = n
        self.pending = {}
        self._set_weights(weights)
        if reset:
            with self._lock():
                self.ctl.zero_()

    def _set_weights(self, weights: Sequence[float] | None) -> None:
        if weights is None:
            self.coef = self.weights = None
            self.untrained = set()
            return
        total = float(sum(weights))
        self.weights = list(weights)
        self.coef = [w / total for w in weights] if total > 0 else None
        self.untrained = {i for i, w in enumerate(weights) if w == 0}

    def _lock(self):
        return self.cond if self.cond is not None else nullcontext()

    def claim(self) -> int:
        """The next client position to train (worker processes share the queue, in FedAvg order)."""
        with self._lock():
            k = int(self.ctl[1])
            self.ctl[1] = k + 1
        return k

    # ------------------------------------------------------------ adding clients

    @torch.no_grad()
    def _fold(self, pos: int, state: State) -> None:
        c = self.coef[pos]
        if self.n == 1:  # fedavg returns a single state as an exact copy
            for k, a in self.acc.items():
                a.copy_(state[k])
        elif pos == 0:
            for k, a in self.acc.items():
                torch.mul(state[k].detach(), c, out=a)
        else:
            for k, a in self.acc.items():
                a.add_(state[k].detach() * c)

    def _advance(self, glob: Callable[[], State]) -> bool:
        """Add every position whose turn has come and that this process can add; True if any was."""
        moved = False
        while self.coef is not None:
            pos = int(self.ctl[0])
            if pos >= self.n:
                break
            if pos in self.pending:
                self._fold(pos, self.pending.pop(pos))
            elif pos in self.untrained:  # it trained nothing: it holds the downloaded weights
                self._fold(pos, glob())
            else:
                break
            self.ctl[0] = pos + 1
            moved = True
        return moved

    def add(self, pos: int, state: State, glob: Callable[[], State]) -> None:
        """Client ``pos`` finished with weights ``state`` (read now, not kept: it is copied if it must wait)."""
        with self._lock():
            self._advance(glob)
            if self.coef is not None and int(self.ctl[0]) == pos:
                self._fold(pos, state)
                self.ctl[0] = pos + 1
                self._advance(glob)
            else:
                self.pending[pos] = {k: v.detach().clone() for k, v in state.items()}
            if self.cond is not None:
                self.cond.notify_all()
        if self.max_pending is not None:
            self._wait(glob, self.max_pending)

    def _wait(self, glob: Callable[[], State], most: int) -> None:
        """Until at most ``most`` of this process's finished clients still wait for their turn."""
        while len(self.pending) > most:
            with self._lock():
                if self._advance(glob) and self.cond is not None:
                    self.cond.notify_all()
                if len(self.pending) > most:
                    if self.cond is None:
                        raise RuntimeError("FedAvgSum: a client's turn never came (positions out of order)")
                    self.cond.wait(0.05)

    def flush(self, glob: Callable[[], State]) -> None:
        """Wait until every client this process finished is in the sum (a worker, at the end of its round)."""
        self._wait(glob, 0)

    @torch.no_grad()
    def install(self, total: State) -> None:
        """The whole round's sum, added up elsewhere (the partial sums of Ray workers,
        ``flexpl.sim.exec.ray_pool``): every position is in, :meth:`finish` returns ``total``."""
        if self.coef is None:
            raise RuntimeError("FedAvgSum.install: the round's weights are not known (no begin with weights)")
        with self._lock():
            for k, a in self.acc.items():
                a.copy_(total[k])
            self.ctl[0] = self.n
            self.pending = {}

    def finish(self, weights: Sequence[float], glob: Callable[[], State]) -> dict[str, torch.Tensor]:
        """The average, once every position is in (the process that owns the round, at the upload).

        ``weights`` are the upload's; they must be the ones given to :meth:`begin` if any were.
        """
        if self.weights is None:
            self._set_weights(weights)
        elif [float(w) for w in weights] != [float(w) for w in self.weights] or len(weights) != self.n:
            raise RuntimeError(f"FedAvgSum: upload weights {list(weights)[:4]}... differ from the round's "
                               f"{self.weights[:4]}...")
        if self.coef is None:
            raise ValueError("fedavg weights must sum to a positive number")
        with self._lock():
            self._advance(glob)
            done = int(self.ctl[0])
        if done != self.n:
            raise RuntimeError(f"FedAvgSum: {done} of {self.n} clients in the sum at the upload")
        return self.acc
