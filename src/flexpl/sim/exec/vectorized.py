"""Vectorized working models: a round's FedAvg clients trained K at a time on one stacked working arena.

[Note: vectorized working models] Where working models apply (``flexpl.sim.exec.working``:
plain FedAvg every round, optimizers reset on download, every path on its own node, no
buffers, no failures), ``engine.executor: vectorized`` trains the round's clients in
chunks of ``engine.vector_chunk``, taken in FedAvg order: the K rows of one stacked arena
(weights ``[K, *shape]`` and the optimizer state of each row) are loaded with the
aggregator's weights and zeroed optimizer state, and the clients' local steps run in
lockstep as batched matmuls (``torch.baddbmm`` over ``[K, out, in]``), one autograd
pass for the K clients. Rows are ordered by decreasing step count, so the clients still
training at step ``t`` are a prefix of the rows (a client with fewer batches drops
out); a step whose batches differ in size (a client's last, short batch) pads them and
weighs each sample's loss by ``1 / its client's batch size``, so each row's gradient is
its client's mean-loss gradient. The optimizer steps (SGD with momentum and weight decay,
Adam; clipping per row and per stage) are torch's single-tensor arithmetic on the stacked
rows. After the chunk each row is added to the FedAvg sum (``flexpl.sim.exec.fedavg_sum``) at its
client's position with its sample weight. Memory is K rows, not one per client.

Only the arithmetic is batched: the trace (every transfer, forward, backward, upload and
aggregation, with its FLOPs, bytes and clock) is recorded by the engine's own step code
walking the round on shapes (``Engine.shadow``), as for worker processes, so it is the
sequential engine's. Weights agree with the sequential engine to float round-off
([Note: mode equivalence]). The walk runs in this thread while the arithmetic runs in a
second one (torch's kernels release the GIL), so on two cores they overlap.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from flexpl.models import BlockModel
from flexpl.sim.exec.policy import WORKERS_ENV, Choice, threads
from flexpl.sim.exec.processes import _sum_losses
from flexpl.sim.exec.working import working_stages
from flexpl.sim.replica import clip_coefficients

if TYPE_CHECKING:
    from flexpl.config.scenario import Scenario
    from flexpl.plan.spec import Layout
    from flexpl.sim.engine import Engine
    from flexpl.sim.node_data import NodeData

Op = tuple  # ("linear", weight key, bias key or None) | ("fn", callable) | ("flatten", start, end)
_POINTWISE = {nn.ReLU: F.relu, nn.Tanh: torch.tanh, nn.Sigmoid: torch.sigmoid}
# each one's input gradient from its output gradient and its output
_POINTWISE_GRAD = {F.relu: lambda d, y: d.masked_fill(y <= 0, 0.0), torch.tanh: lambda d, y: d * (1 - y * y),
                   torch.sigmoid: lambda d, y: d * (y * (1 - y))}


def compile_ops(module: nn.Module, prefix: str = "") -> list[Op] | None:
    """``module``'s forward as a list of batched operations on ``[K, B, ...]`` tensors, or None when some
    layer is not one this mode runs (Linear, ReLU, Tanh, Sigmoid, Flatten, Identity, in
    ``Sequential`` or ``BlockModel`` containers). Weight keys are ``module``'s parameter names."""
    if isinstance(module, BlockModel):
        children: Any = ((f"blocks.{n}", b) for n, b in module.blocks.items())
    elif isinstance(module, nn.Sequential):
        children = module.named_children()
    else:
        children = None
    if children is not None:
        ops: list[Op] = []
        for name, child in children:
            sub = compile_ops(child, f"{prefix}{name}.")
            if sub is None:
                return None
            ops += sub
        return ops
    if type(module) is nn.Linear:
        return [("linear", f"{prefix}weight", f"{prefix}bias" if module.bias is not None else None)]
    if type(module) in _POINTWISE:
        return [("fn", _POINTWISE[type(module)])]
    if type(module) is nn.Identity:
        return []
    if type(module) is nn.Flatten:
        # on one sample batch [B, ...]; here [K, B, ...]: non-negative dims move by one
        start, end = module.start_dim, module.end_dim
        return [("flatten", start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)]
    return None


def _forward(ops: list[Op], params: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The compiled forward of K rows (``x``: ``[K, B, ...]``, ``params[key]``: ``[K, *shape]``), and what
    the backward needs of each op (its input for a Linear, its output for a pointwise op, the shape for a Flatten)."""
    saved: list = []
    for op in ops:
        if op[0] == "linear":
            w = params[op[1]]
            x3 = x.reshape(x.shape[0], -1, x.shape[-1])
            saved.append((x3, x.shape))
            y = torch.bmm(x3, w.transpose(1, 2)) if op[2] is None else \
                torch.baddbmm(params[op[2]].unsqueeze(1), x3, w.transpose(1, 2))
            x = y.reshape(*x.shape[:-1], w.shape[1])
        elif op[0] == "fn":
            x = op[1](x)
            saved.append(x)
        else:
            saved.append(x.shape)
            x = x.flatten(op[1], op[2])
    return x, saved


def _backward(ops: list[Op], params: dict[str, torch.Tensor], saved: list, dy: torch.Tensor,
              put: Callable[[str, torch.Tensor, torch.Tensor | None], None]) -> None:
    """Backward of :func:`_forward` from the output gradient ``dy``: ``put(name, a, b)`` receives each
    parameter's gradient as ``a @ b`` per row (a Linear's weight: ``dy^T @ input``, what autograd computes
    for ``F.linear``) or, with ``b`` None, as ``a`` summed over the batch (its bias). The input gradient of
    a Linear is taken before its weight's ``put`` (which may update the weight in place); none is taken
    before the first weights."""
    first = next(i for i, op in enumerate(ops) if op[0] == "linear")
    for i in range(len(ops) - 1, first - 1, -1):
        op = ops[i]
        if op[0] == "linear":
            x3, shape = saved[i]
            d3 = dy.reshape(dy.shape[0], -1, dy.shape[-1])
            dx = torch.bmm(d3, params[op[1]]).reshape(shape) if i > first else None
            put(op[1], d3.transpose(1, 2), x3)
            if op[2] is not None:
                put(op[2], d3, None)
            dy = dx
        elif op[0] == "fn":
            dy = _POINTWISE_GRAD[op[1]](dy, saved[i])
        else:
            dy = dy.reshape(saved[i])


def fits(scn: Scenario, layout: Layout, stages: list[nn.Module], is_local: Callable[[str], bool] | None) -> bool:
    """True when ``scn``'s plan trains on working models and every stage can run here, stacked:
    vectorized runs then train the clients K at a time on one stacked working arena."""
    tr = scn.training
    if scn.failures.active or tr.aggregator.kind != "fedavg" or tr.loss != "cross_entropy":
        return False
    work = working_stages(layout, stages, tr.optimizer, is_local, None)
    if not work:
        return False
    for s, m in enumerate(stages):
        has = any(True for _ in m.parameters())
        if (has and s not in work) or any(True for _ in m.buffers()) or compile_ops(m) is None:
            return False
        if any(not p.requires_grad for p in m.parameters()):
            return False
    return True


# auto trains working-model plans stacked up to this many parameters per client (the 784-200-200-10 MLP,
# 199k, was measured: see README "Simulator speed"; larger models were not)
MAX_AUTO_PARAMS = 1_000_000
# ... and from this many clients per round
MIN_AUTO_CLIENTS = 16
# default training threads (each holds its own K stacked rows; the Python between kernels shares one GIL;
# measured on 2 cores only)
MAX_DEFAULT_THREADS = 4


def prefer(scn: Scenario, choice: Any, layout: Layout, stages: list[nn.Module],
           is_local: Callable[[str], bool] | None, fit: bool | None = None) -> Any:
    """``engine.executor: auto``: the vectorized mode for plans whose clients train stacked here (:func:`fits`,
    at most :data:`MAX_AUTO_PARAMS` parameters per client, at least :data:`MIN_AUTO_CLIENTS` clients a round),
    else ``choice`` (``policy.choose``'s). ``fit``: :func:`fits`, if already known."""
    if scn.engine.executor != "auto" or not (fits(scn, layout, stages, is_local) if fit is None else fit):
        return choice
    if sum(p.numel() for m in stages for p in m.parameters()) > MAX_AUTO_PARAMS:
        return choice
    # (fits: every stage per data node, so the first stage's replicas are the data nodes)
    if len(layout.replicas[0]) * min(scn.training.clients_per_round, 1.0) < MIN_AUTO_CLIENTS:
        return choice  # few clients: little to batch; the other modes are bitwise the sequential engine
    return Choice("vectorized", f"FedAvg clients on working models, {scn.engine.vector_chunk} at a time "
                  "as batched matmuls on one stacked arena (flexpl.sim.exec.vectorized)")


def thread_count(scn: Scenario) -> int:
    """Training threads of a vectorized working-model run: ``engine.workers`` (default: the CPU cores, at most
    :data:`MAX_DEFAULT_THREADS`), at most ``FLEXPL_WORKERS`` (set by ``flexpl sweep --jobs``)."""
    import os

    cores = os.cpu_count() or 1
    default = min(cores, MAX_DEFAULT_THREADS)
    return max(1, min(scn.engine.workers or default, int(os.environ.get(WORKERS_ENV) or cores)))


class VecWork:
    """Trains a round's working-model clients K at a time (see [Note: vectorized working models])."""

    def __init__(self, eng: Engine, chunk: int, threads: int = 1) -> None:
        """``chunk`` clients per stacked arena; ``threads`` arenas trained side by side in threads."""
        self.chunk = max(int(chunk), 1)
        self.stages = sorted(eng.working)
        self.ops: list[Op] = []
        self.keys: dict[int, list[str]] = {}  # stage -> its parameter names (its state-dict keys)
        for s, _ in enumerate(eng.plan.stages):
            mod = eng.working[s].module if s in eng.working else eng.replicas[s][0].module
            ops = compile_ops(mod)
            if ops is None:
                raise ValueError(f"stage {s} cannot run as stacked working models")
            self.ops += ops
            if s in eng.working:
                self.keys[s] = [n for n, _ in mod.named_parameters()]
        cfg = eng.opt_cfg
        self.cfg = cfg
        self.like = {(s, n): p for s in self.stages for n, p in eng.working[s].module.named_parameters()}
        self._alloc()
        self.threads = max(1, int(threads))
        self.lanes: list[VecWork] = [self]
        self.meta: dict[str, NodeData] = {}
        self.key_of = {n: (s, n) for s in self.stages for n in self.keys[s]}
        # SGD without weight decay or clipping: each gradient goes straight into the momentum buffer
        # (``buf = momentum * buf + g`` in one pass) or, without momentum, into the weights
        plain_sgd = cfg.name == "sgd" and not cfg.weight_decay and cfg.clip_norm is None
        self.fuse = ("momentum" if cfg.momentum else "weights") if plain_sgd else None

    def _alloc(self) -> None:
        """This lane's stacked rows: weights, gradients and optimizer state of ``chunk`` clients."""
        cfg, k = self.cfg, self.chunk
        self.params = {key: torch.zeros((k, *p.shape), dtype=p.dtype) for key, p in self.like.items()}
        self.grads = {key: torch.zeros_like(t) for key, t in self.params.items()}
        kinds = ["exp_avg", "exp_avg_sq"] if cfg.name == "adam" else (["momentum_buffer"] if cfg.momentum else [])
        self.state = {kind: {key: torch.zeros_like(t) for key, t in self.params.items()} for kind in kinds}

    # ------------------------------------------------------------ a round

    def _lanes(self, n: int) -> list[VecWork]:
        """``n`` sets of stacked rows (this one first), one per training thread."""
        while len(self.lanes) < n:
            lane = copy.copy(self)
            lane._alloc()
            self.lanes.append(lane)
        return self.lanes[:n]

    def train_round(self, eng: Engine, by_name: dict[str, NodeData], plan_batches: dict[str, list[torch.Tensor]],
                    walk: Callable[..., tuple[float, int, dict[str, int]]], fed_step: list[int],
                    rnd: int) -> tuple[float, int, dict[str, int]]:
        """One round: the clients train stacked, chunk ``c`` in thread ``c % threads``, while this thread
        walks the steps on shapes to record the trace (``walk`` is the simulator's ``train_round``).
        Chunks enter the FedAvg sums in order, whichever thread finishes first. Returns the round's loss
        sum and samples (summed in the walk's step order, as the sequential engine sums them) and the
        samples each node saw. ``Engine.expect_round`` must have been called for the round."""
        work = {n: sum(len(b) for b in bs) for n, bs in plan_batches.items()}
        order = eng.claim_order(work)
        chunks = [order[c:c + self.chunk] for c in range(0, len(order), self.chunk)]
        lanes = self._lanes(max(1, min(self.threads, len(chunks))))
        losses: dict[str, list[tuple[float, int]]] = {}
        failed: list[BaseException] = []
        turn = [0]
        cond = threading.Condition()

        def train(j: int, lane: VecWork) -> None:
            try:
                for c in range(j, len(chunks), len(lanes)):
                    rows = lane._train_chunk(eng, by_name, plan_batches, chunks[c], losses)
                    with cond:
                        while turn[0] != c and not failed:
                            cond.wait(0.05)
                        if failed:
                            return
                        lane._fold(eng, rows)
                        turn[0] += 1
                        cond.notify_all()
            except BaseException as exc:  # re-raised in the caller's thread
                with cond:
                    failed.append(exc)
                    cond.notify_all()

        for n in plan_batches:
            if n not in self.meta:
                self.meta[n] = by_name[n].meta()
        log: list[tuple[list[str], int]] = []
        with threads(1):
            workers = [threading.Thread(target=train, args=(j, lane), name=f"flexpl-vecwork-{j}", daemon=True)
                       for j, lane in enumerate(lanes)]
            for t in workers:
                t.start()
            try:
                with eng.shadow(set(plan_batches)):
                    _, _, seen = walk(eng, self.meta, plan_batches, fed_step, rnd, log)
            finally:
                for t in workers:
                    t.join()
        if failed:
            raise failed[0]
        loss_sum, n_sum = _sum_losses(log, losses)
        return loss_sum, n_sum, seen

    def _train_chunk(self, eng: Engine, by_name: dict[str, NodeData], plan_batches: dict[str, list[torch.Tensor]],
                     names: list[str], losses: dict[str, list[tuple[float, int]]]) -> list[str]:
        """Train ``names`` (consecutive in FedAvg order) on the stacked rows; returns them in row order."""
        rows = sorted(names, key=lambda n: -len(plan_batches[n]))  # stable: still-training rows are a prefix
        k0 = len(rows)
        with torch.no_grad():
            for s in self.stages:
                glob = eng.global_[s].state_dict()
                for n in self.keys[s]:
                    p = self.params[(s, n)][:k0]
                    p.copy_(glob[n].expand_as(p))
            for d in self.state.values():
                for t in d.values():
                    t[:k0].zero_()
        lr = float(eng.lr_now[0])
        counts = [len(plan_batches[n]) for n in rows]
        for t in range(counts[0] if counts else 0):
            k = sum(1 for c in counts if c > t)
            xs, ys = [], []
            for n in rows[:k]:
                x, y = by_name[n].batch(plan_batches[n][t])
                xs.append(x)
                ys.append(y)
            sizes = [int(y.shape[0]) for y in ys]
            named = {n: self.params[(s, n)][:k] for s in self.stages for n in self.keys[s]}
            grads = {key: g[:k] for key, g in self.grads.items()}
            with torch.no_grad():
                if min(sizes) == max(sizes):
                    x, y, wt = torch.stack(xs), torch.stack(ys), None
                else:  # pad to the largest batch; each sample weighs 1 / its client's batch size
                    b = max(sizes)
                    x = xs[0].new_zeros((k, b, *xs[0].shape[1:]))
                    y = ys[0].new_zeros((k, b))
                    wt = torch.zeros((k, b, 1), dtype=torch.float32)
                    for i, (xi, yi) in enumerate(zip(xs, ys)):
                        x[i, :sizes[i]] = xi
                        y[i, :sizes[i]] = yi
                        wt[i, :sizes[i]] = 1.0 / sizes[i]
                out, saved = _forward(self.ops, named, x)
                if out.dim() != 3:
                    raise RuntimeError(f"vectorized working models: the model outputs {tuple(out.shape[2:])} per "
                                       "sample, not class scores; run with --set engine.executor=sequential")
                logp = torch.log_softmax(out, -1)
                per = -logp.gather(-1, y.unsqueeze(-1))  # each sample's cross-entropy, [k, B, 1]
                row_loss = per.mean((1, 2)) if wt is None else (per * wt).sum((1, 2))
                # d mean-loss / d logits = (softmax - one-hot) / batch size, per row
                dy = logp.exp_().scatter_add_(-1, y.unsqueeze(-1), per.new_full(per.shape, -1.0))
                dy = dy.div_(sizes[0]) if wt is None else dy.mul_(wt)
                _backward(self.ops, named, saved, dy, self._sink(k, grads, lr))
            self._step(k, t + 1, grads, lr)
            for n, v, m in zip(rows, row_loss.detach().tolist(), sizes):
                losses.setdefault(n, []).append((0.0 + v * m, m))
        return rows

    @torch.no_grad()
    def _fold(self, eng: Engine, rows: list[str]) -> None:
        """Add the chunk's rows (clients ``rows``, the next ones in FedAvg order) to each stage's sum at once:
        ``acc += coef @ rows`` (the FedAvg sum, summed per chunk: equal to fedavg's to float round-off)."""
        k = len(rows)
        for s in self.stages:
            w = eng.working[s]
            sm = w.sum
            glob = lambda s=s: eng.global_[s].state_dict()  # noqa: E731
            sm._advance(glob)  # positions before the chunk that trained nothing
            pos = [w.pos[eng.layout.serves[s][n]] for n in rows]
            if sm.coef is None or int(sm.ctl[0]) != min(pos) or any(
                    p not in pos and p not in sm.untrained for p in range(min(pos), max(pos) + 1)):
                raise RuntimeError("vectorized working models: clients out of FedAvg order")
            if sm.n == 1:
                sm._fold(pos[0], {m: self.params[(s, m)][0] for m in self.keys[s]})
            else:
                coef = torch.tensor([[sm.coef[p] for p in pos]], dtype=torch.float32)
                for m, acc in sm.acc.items():
                    rows_m = self.params[(s, m)][:k].reshape(k, -1)
                    if min(pos) == 0:
                        torch.mm(coef, rows_m, out=acc.view(1, -1))
                    else:
                        acc.view(1, -1).addmm_(coef, rows_m)
            sm.ctl[0] = max(pos) + 1  # (positions inside the chunk that trained nothing add 0 x weights)
            sm._advance(glob)

    def _sink(self, k: int, grads: dict[tuple[int, str], torch.Tensor],
              lr: float) -> Callable[[str, torch.Tensor, torch.Tensor | None], None]:
        """Where :func:`_backward` puts each gradient of rows ``[:k]``: into ``grads`` (then :meth:`_step`),
        or fused with the SGD update (see ``self.fuse``)."""
        mom = self.cfg.momentum

        def put(name: str, a: torch.Tensor, b: torch.Tensor | None) -> None:
            key = self.key_of[name]
            if self.fuse is None:
                if b is None:
                    torch.sum(a, 1, out=grads[key])
                else:
                    torch.bmm(a, b, out=grads[key])
                return
            dst = self.state["momentum_buffer"][key][:k] if self.fuse == "momentum" else self.params[key][:k]
            beta, alpha = (mom, 1.0) if self.fuse == "momentum" else (1.0, -lr)
            if b is None:
                dst.mul_(beta).add_(a.sum(1), alpha=alpha)
            else:
                dst.baddbmm_(a, b, beta=beta, alpha=alpha)
        return put

    @torch.no_grad()
    def _step(self, k: int, step: int, grads: dict[tuple[int, str], torch.Tensor], lr: float) -> None:
        """The optimizer step of rows ``[:k]`` (each one's ``step``-th since its reset), as ``Engine.opt_step``
        does for one replica: clip each row's gradient over its stage, then torch's single-tensor update."""
        cfg = self.cfg
        if self.fuse == "weights":  # already applied by the backward
            return
        if self.fuse == "momentum":
            for key, full in self.params.items():
                full[:k].add_(self.state["momentum_buffer"][key][:k], alpha=-lr)
            return
        if cfg.clip_norm is not None:
            for s in self.stages:
                keys = [(s, n) for n in self.keys[s]]
                sq = sum(grads[key].reshape(k, -1).pow(2).sum(1) for key in keys)
                coef = clip_coefficients(sq.sqrt(), cfg.clip_norm)
                for key in keys:
                    g = grads[key]
                    g.mul_(coef.view((k,) + (1,) * (g.dim() - 1)))
        for key, full in self.params.items():
            p, g = full[:k], grads[key]
            if cfg.name == "adam":
                beta1, beta2, eps = 0.9, 0.999, 1e-8
                if cfg.weight_decay:
                    g = g.add(p, alpha=cfg.weight_decay)
                m, v = self.state["exp_avg"][key][:k], self.state["exp_avg_sq"][key][:k]
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                step_size = lr / (1 - beta1 ** step)
                denom = (v.sqrt() / ((1 - beta2 ** step) ** 0.5)).add_(eps)
                p.addcdiv_(m, denom, value=-step_size)
                continue
            if cfg.weight_decay:
                g = g.add(p, alpha=cfg.weight_decay)
            if cfg.momentum:
                buf = self.state["momentum_buffer"][key][:k]
                buf.mul_(cfg.momentum).add_(g, alpha=1)
                g = buf
            p.add_(g, alpha=-lr)
