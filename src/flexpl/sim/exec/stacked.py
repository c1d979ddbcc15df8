"""Stacked storage for the replicas of one stage: one tensor per parameter, one row per replica.

A stage with many replicas (FedAvg clients, FPL fronts) keeps every replica's parameter
``name`` as row ``r`` of one tensor ``params[name]`` of shape ``[R, *shape]``; each replica's
module holds ``nn.Parameter`` views of its rows, so the step code, ``state_dict`` and
``load_state_dict`` work on a replica exactly as on a standalone module. The optimizer
state (SGD momentum, Adam moments and step counts) lives in the same kind of stacked
tensors and is handed to each replica's ``torch.optim`` optimizer as views.

This buys three things without changing any arithmetic:

- bulk syncs: a FedAvg download writes all rows in one copy, a reset zeroes them in one op;
- vectorized execution: a contiguous run of replicas is ``params[name][a:b]``, a view that
  ``torch.func.vmap`` consumes without copying (see ``Engine.train_step``);
- worker processes: with ``shared=True`` the stacked tensors live in shared memory, so
  processes forked after setup train the very same rows (see ``flexpl.sim.exec.processes``).

[Note: pre-made optimizer state] ``torch.optim`` creates its state lazily on the first
step. Here it exists from the start, zeroed, and a reset zeroes it in place. This is the
same arithmetic: SGD's first step computes ``0 * momentum + grad`` (exactly ``grad``, what
torch's ``clone`` gives) and Adam's lazy state is zeros and a zero step count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from flexpl.config.training import OptimizerCfg


def set_parameter(module: nn.Module, name: str, param: nn.Parameter) -> None:
    """Replace parameter ``name`` (dotted) of ``module`` by ``param``."""
    owner, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, leaf, param)


def alias(base: torch.Tensor, index: int | slice) -> torch.Tensor:
    """``base[index]`` as a tensor of its own over the same memory, with its own version counter.

    Rows are independent: an optimizer step on one replica's row must not look, to
    autograd, like a change to another replica's saved weights (views would share the
    stacked tensor's version counter and trip autograd's in-place check).
    """
    v = base[index]
    out = torch.empty(0, dtype=base.dtype, device=base.device)  # (set_ needs the storage's device)
    out.set_(base.untyped_storage(), v.storage_offset(), v.shape, v.stride())
    return out


def stack_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(rows)``, each row keeping its layout: 4-D rows in channels-last memory format
    (``engine.train_memory_format``) stay channels-last, so replicas' convolutions run channels-last."""
    first = rows[0]
    # the strides a channels-last conversion gives, which differ from the default ones even where the bytes
    # are the same (one input channel): torch picks a convolution's layout from them
    if first.dim() == 4 and first.stride() == _channels_last_strides(first.shape) != _contiguous_strides(first.shape):
        o, i, h, w = first.shape
        out = torch.empty((len(rows), o, h, w, i), dtype=first.dtype, device=first.device).permute(0, 1, 4, 2, 3)
        for r, t in enumerate(rows):
            out[r].copy_(t)
        return out
    return torch.stack(list(rows))


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    return torch.empty(shape, device="meta").stride()


def _channels_last_strides(shape: torch.Size) -> tuple[int, ...]:
    return torch.empty(shape, device="meta", memory_format=torch.channels_last).stride()


def rows_slice(rows: Sequence[int]) -> slice | None:
    """``rows`` as a slice when they are ascending and contiguous, else None."""
    if rows and all(b == a + 1 for a, b in zip(rows, rows[1:])):
        return slice(rows[0], rows[-1] + 1)
    return None


class Arena:
    """Parameters and optimizer state of ``R`` replicas of one stage, stacked row by row."""

    def __init__(self, modules: Sequence[nn.Module], opt_cfg: OptimizerCfg, shared: bool = False) -> None:
        first = modules[0]
        self.names = [n for n, _ in first.named_parameters()]
        self.opt_cfg = opt_cfg
        n_rep = len(modules)
        named = [dict(m.named_parameters()) for m in modules]
        self.params: dict[str, torch.Tensor] = {n: stack_rows([d[n].detach() for d in named]) for n in self.names}
        self.device = next(iter(self.params.values())).device if self.params else torch.device("cpu")
        kinds = []
        if opt_cfg.name == "adam":
            kinds = ["exp_avg", "exp_avg_sq"]
        elif opt_cfg.momentum > 0:
            kinds = ["momentum_buffer"]
        self.state: dict[str, dict[str, torch.Tensor]] = {
            k: {n: torch.zeros_like(t) for n, t in self.params.items()} for k in kinds}
        # Adam keeps one scalar step count per parameter tensor (float32, as torch makes it)
        self.steps = torch.zeros((n_rep, len(self.names)), dtype=torch.float32) if opt_cfg.name == "adam" else None
        if shared:
            for t in self._all_tensors():
                t.share_memory_()
        for r, m in enumerate(modules):
            for n in self.names:
                set_parameter(m, n, nn.Parameter(alias(self.params[n], r)))

    def _all_tensors(self) -> list[torch.Tensor]:
        out = list(self.params.values()) + [t for d in self.state.values() for t in d.values()]
        return out + ([self.steps] if self.steps is not None else [])

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0] if self.params else 0

    def _index(self, rows: Sequence[int]) -> torch.Tensor:
        """``rows`` as an index tensor on the arena's device (``index_copy_`` needs them on one device)."""
        return torch.as_tensor(list(rows), device=self.device)

    # ------------------------------------------------------------ optimizer state

    def bind(self, r: int, module: nn.Module, opt: torch.optim.Optimizer | None) -> None:
        """Give replica ``r``'s optimizer its state as views of the stacked rows [Note: pre-made optimizer state]."""
        if opt is None or not self.state:
            return
        named = dict(module.named_parameters())
        for j, n in enumerate(self.names):
            p = named[n]
            st = {k: self.state[k][n][r] for k in self.state}
            if self.steps is not None:
                st["step"] = self.steps[r, j]
            opt.state[p] = st

    def absorb(self, r: int, module: nn.Module, opt: torch.optim.Optimizer | None) -> None:
        """Copy replica ``r``'s optimizer state (e.g. just loaded from a checkpoint) into its rows, then bind."""
        if opt is None or not self.state:
            return
        named = dict(module.named_parameters())
        with torch.no_grad():
            for j, n in enumerate(self.names):
                st = opt.state.get(named[n], {})
                for k in self.state:
                    if k in st:
                        self.state[k][n][r].copy_(st[k])
                    else:
                        self.state[k][n][r].zero_()
                if self.steps is not None:
                    self.steps[r, j] = float(st["step"]) if "step" in st else 0.0
        self.bind(r, module, opt)

    @torch.no_grad()
    def reset(self, rows: Sequence[int]) -> None:
        """A fresh optimizer for ``rows``: zero their state in place."""
        if not rows:
            return
        sl = rows_slice(rows)
        idx = sl if sl is not None else self._index(rows)
        for d in self.state.values():
            for t in d.values():
                t[idx] = 0
        if self.steps is not None:  # (on the CPU, as torch keeps Adam's step counts)
            self.steps[sl if sl is not None else torch.as_tensor(list(rows))] = 0

    # ------------------------------------------------------------ weights

    @torch.no_grad()
    def load_rows(self, rows: Sequence[int], state: dict[str, torch.Tensor]) -> None:
        """Write the same weights ``state`` into every row of ``rows`` (a FedAvg download)."""
        sl = rows_slice(rows)
        for n, t in self.params.items():
            src = state[n]
            if sl is not None:
                t[sl].copy_(src.expand((sl.stop - sl.start,) + tuple(src.shape)))
            else:
                idx = self._index(rows)
                t.index_copy_(0, idx, src.expand((len(rows),) + tuple(src.shape)).contiguous())

    def row_state(self, r: int) -> dict[str, torch.Tensor]:
        """Replica ``r``'s weights as a state dict of views (no copy)."""
        return {n: t[r] for n, t in self.params.items()}

    def take(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """Leaf tensors ``[k, *shape]`` holding ``rows``' weights, requiring grad: views when contiguous."""
        sl = rows_slice(rows)
        if sl is not None:
            return {n: alias(t, sl).requires_grad_() for n, t in self.params.items()}
        idx = self._index(rows)
        return {n: t[idx].requires_grad_() for n, t in self.params.items()}

    @torch.no_grad()
    def sgd_step(self, rows: Sequence[int], grads: dict[str, torch.Tensor], lr: float | None = None) -> None:
        """torch.optim.SGD's step (single-tensor path, same operations in the same order) on ``rows`` at once,
        at learning rate ``lr`` (default: the configured one)."""
        cfg = self.opt_cfg
        lr = cfg.lr if lr is None else lr
        sl = rows_slice(rows)
        idx = None if sl is not None else self._index(rows)
        for n, t in self.params.items():
            p = t[sl] if sl is not None else t[idx]
            g = grads[n]
            if cfg.weight_decay:
                g = g.add(p, alpha=cfg.weight_decay)
            if cfg.momentum:
                buf_all = self.state["momentum_buffer"][n]
                buf = buf_all[sl] if sl is not None else buf_all[idx]
                buf.mul_(cfg.momentum).add_(g, alpha=1)
                g = buf
                if idx is not None:
                    buf_all.index_copy_(0, idx, buf)
            p.add_(g, alpha=-lr)
            if idx is not None:
                t.index_copy_(0, idx, p)
