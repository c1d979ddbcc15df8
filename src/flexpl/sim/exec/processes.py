"""The worker processes of ``engine.executor: processes`` (see :mod:`flexpl.sim.exec.policy`).

:class:`ProcessPool`: for plans whose data-node paths share no replica (FedAvg, SplitFed),
workers forked after setup train shares of the data nodes for a whole round, on the
replicas' stacked weights in shared memory (``flexpl.sim.exec.stacked``), while this process
walks the same steps on shapes only and so records the trace. :class:`StepPool`: for plans
whose replicas meet step by step (FPL's fronts feed a shared trunk), workers run a stage's
replicas every step, driven by this process. [Note: mode equivalence] in
:mod:`flexpl.sim.exec.policy` says how their arithmetic relates to ``sequential``'s.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import torch
import torch.multiprocessing  # noqa: F401  (shares tensors sent through pipes via shared memory)

from flexpl.plan.program import step_blocks
from flexpl.plan.program import walk as walk_program
from flexpl.sim.exec.policy import threads
from flexpl.sim.runner import TensorRunner
from flexpl.sim.state import VecChunk

if TYPE_CHECKING:
    from flexpl.sim.engine import Engine, NodeData


# ---------------------------------------------------------------- worker processes


def _split(work: dict[str, int], n: int) -> list[list[str]]:
    """Nodes into ``n`` shares of about equal work (greedy, largest first); each share keeps node order."""
    load = [0] * n
    owner: dict[str, int] = {}
    for name in sorted(work, key=lambda k: (-work[k], list(work).index(k))):
        w = min(range(n), key=lambda i: (load[i], i))
        owner[name] = w
        load[w] += work[name]
    return [[name for name in work if owner[name] == w] for w in range(n)]


def _start_worker(inherited: list[Any]) -> None:
    """First thing in a forked worker: one thread, die with the parent, drop the parent's pipe ends.

    Without closing the parent's ends of every pipe (inherited by the fork), a worker never
    sees end-of-file when the parent dies; ``PR_SET_PDEATHSIG`` also kills it at once then.
    """
    torch.set_num_threads(1)
    for c in inherited:
        c.close()
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: end-of-file on the pipe still ends the worker
        pass


def _trim_heap() -> None:
    """Collect garbage and hand the heap's free memory back to the system (glibc ``malloc_trim``), if possible."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _fork_workers(target: Callable[..., None], args: tuple, workers: int) -> tuple[list[Any], list[Any]]:
    """``workers`` forked processes running ``target(conn, *args)``; returns the parent's pipe ends and the processes."""
    ctx = mp.get_context("fork")
    _trim_heap()  # what the parent freed is not inherited (every worker's resident memory starts as its own)
    conns, procs = [], []
    for _ in range(workers):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=target, args=(child, [*conns, parent], *args), daemon=True)
        p.start()
        child.close()
        conns.append(parent)
        procs.append(p)
    return conns, procs


class _Workers:
    """Forked worker processes and the parent's pipe ends: receive a reply, stop them."""

    def __init__(self, target: Callable[..., None], args: tuple, workers: int) -> None:
        self.conns, self.procs = _fork_workers(target, args, workers)

    def _recv(self, w: int) -> tuple:
        """Worker ``w``'s next ``("ok", ...)`` reply; a dead or failed worker stops the run."""
        try:
            msg = self.conns[w].recv()
        except EOFError:
            raise RuntimeError("a worker process of engine.executor=processes died; "
                               "run with --set engine.executor=sequential to see why") from None
        if msg[0] != "ok":
            raise RuntimeError(f"a worker process failed: {msg[1]}")
        return msg

    def close(self) -> None:
        """Stop the workers."""
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()


def _serve(conn: Any, inherited: list[Any], eng: Engine, by_name: dict[str, NodeData]) -> None:
    """A worker: train the data nodes it is sent, node by node, on the shared weights; report losses."""
    _start_worker(inherited)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, KeyboardInterrupt):  # the parent is gone
            return
        if msg[0] == "stop":
            return
        try:
            if msg[0] == "fold":
                conn.send(("ok", _train_folding(eng, by_name, msg[1], msg[2])))
                continue
            conn.send(("ok", {name: _train_node(eng, by_name[name], idx_list) for name, idx_list in msg[1].items()}))
        except BaseException as exc:  # report, then keep serving (the parent decides)
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _train_folding(eng: Engine, by_name: dict[str, NodeData], order: list[tuple[str, list[Any]]],
                   samples: dict[str, int]) -> dict[str, list[tuple[float, int]]]:
    """A worker's round on working models [Note: working models]: take the next client in FedAvg order
    from the shared queue, train it, add it to the shared sum when its turn comes; until none is left."""
    eng.expect_round(samples, reset=False)
    queue = eng.working[next(iter(eng.working))].sum
    out: dict[str, list[tuple[float, int]]] = {}
    while (k := queue.claim()) < len(order):
        name, idx_list = order[k]
        out[name] = _train_node(eng, by_name[name], idx_list)
    eng.flush_working()
    return out


def _train_node(eng: Engine, nd: NodeData, idx_list: list[Any]) -> list[tuple[float, int]]:
    """A worker trains one data node's batches (index arrays) in order; returns (loss sum, samples) per step."""
    res = [eng.train_step({nd.name: nd.batch(torch.from_numpy(idx))}) for idx in idx_list]
    eng.recorder.take()  # this process's own trace is not used (the parent records it)
    return res


class ProcessPool(_Workers):
    """Worker processes forked from a set-up engine; they share its stacked weights (see the module docstring)."""

    def __init__(self, eng: Engine, by_name: dict[str, NodeData], workers: int) -> None:
        # working models: this process trains too (one fork fewer: less memory, no third process on the cores)
        self.trains = bool(eng.working) and workers > 1
        super().__init__(_serve, (eng, by_name), workers - 1 if self.trains else workers)
        self.by_name = by_name
        self.meta = {n: nd.meta() for n, nd in by_name.items()}

    def train_round(self, eng: Engine, plan_batches: dict[str, list[torch.Tensor]],
                    walk: Callable[..., tuple[float, int, dict[str, int]]], fed_step: list[int],
                    rnd: int) -> tuple[float, int, dict[str, int]]:
        """One round: workers train, this process walks the steps on shapes to record the trace.

        ``walk`` is the simulator's ``train_round``; the training loss is summed in the order
        it visits the steps, as the sequential engine sums it.
        """
        work = {n: sum(len(b) for b in bs) for n, bs in plan_batches.items()}
        if self.trains and not fed_step and eng.claim_order(work) == [n for n in plan_batches if work[n] > 0]:
            return self._train_with_workers(eng, plan_batches, work, rnd)
        busy = []
        if eng.working:  # every worker takes the next client from one queue in FedAvg order [Note: working models]
            eng.expect_round(work)
            order = [(n, [b.numpy() for b in plan_batches[n]]) for n in eng.claim_order(work)]
            busy = list(range(min(len(self.conns), len(order))))
            for w in busy:
                self.conns[w].send(("fold", order, work))
        else:
            for w, share in enumerate(_split(work, len(self.conns))):
                if share:
                    self.conns[w].send(("train", {n: [b.numpy() for b in plan_batches[n]] for n in share}))
                    busy.append(w)
        log: list[tuple[list[str], int]] = []
        with eng.shadow(set(plan_batches)):
            _, _, seen = walk(eng, self.meta, plan_batches, fed_step, rnd, log)
        losses: dict[str, list[tuple[float, int]]] = {}
        for w in busy:
            losses.update(self._recv(w)[1])
        return (*_sum_losses(log, losses), seen)

    def _train_with_workers(self, eng: Engine, plan_batches: dict[str, list[torch.Tensor]], work: dict[str, int],
                            rnd: int) -> tuple[float, int, dict[str, int]]:
        """A round on working models with this process as one of the trainers [Note: working models].

        Clients are taken from one queue in FedAvg order. This process visits them in that
        order (the sequential engine's node-major order): a client the workers took is walked
        on shapes (its trace), the next one not taken yet it takes and trains itself (trace and
        arithmetic at once, on one thread as the workers). So the trace is the sequential one,
        and the walk costs only what the workers leave to this process.
        """
        eng.expect_round(work)
        order = eng.claim_order(work)
        payload = [(n, [b.numpy() for b in plan_batches[n]]) for n in order]
        for conn in self.conns:
            conn.send(("fold", payload, work))
        # the round's program for these clients, node by node in FedAvg order (lockstep, no step-level sync)
        blocks = step_blocks(eng.plan, order, {n: [len(b) for b in plan_batches[n]] for n in order}, True, [])
        log: list[tuple[list[str], int]] = []
        with threads(1), ExitStack() as stack:
            runner = _Claiming(eng, self, plan_batches, rnd, log, order, stack)
            walk_program(blocks, runner)
            stack.close()
            eng.flush_working()
        losses = dict(runner.mine)
        for w in range(len(self.conns)):
            losses.update(self._recv(w)[1])
        return (*_sum_losses(log, losses), runner.seen)


class _Claiming(TensorRunner):
    """``ProcessPool._train_with_workers``'s runner: at a client's first step, take it if no worker has
    (train it: trace and arithmetic), else walk its steps on shapes (``Engine.shadow``)."""

    def __init__(self, eng: Engine, pool: ProcessPool, plan_batches: dict[str, list[torch.Tensor]], rnd: int,
                 log: list[tuple[list[str], int]], order: list[str], stack: ExitStack) -> None:
        super().__init__(eng, pool.by_name, plan_batches, rnd, log)
        self.pool, self.stack = pool, stack
        self.queue = eng.working[next(iter(eng.working))].sum
        self.pos = {n: k for k, n in enumerate(order)}
        self.current: str | None = None
        self.took = False
        self.mine: dict[str, list[tuple[float, int]]] = {}

    def step(self, batch: tuple[tuple[str, int], ...]) -> None:
        """One step of one client (node-major: its steps come one after another)."""
        n = batch[0][0]
        if n != self.current:
            self.stack.close()  # the previous client's shapes-only walk ends
            self.current, k = n, self.pos[n]
            with self.queue.cond:  # take it if no worker has
                self.took = int(self.queue.ctl[1]) == k
                if self.took:
                    self.queue.ctl[1] = k + 1
            self.by_name = self.pool.by_name if self.took else self.pool.meta
            if not self.took:
                self.stack.enter_context(self.eng.shadow({n}))
        super().step(batch)
        if self.took:
            self.mine.setdefault(n, []).append(self.last_step)


def _sum_losses(log: list[tuple[list[str], int]], losses: dict[str, list[tuple[float, int]]]) -> tuple[float, int]:
    """The round's training loss and samples, summed in the order the steps ran (as the sequential engine)."""
    loss_sum, n_sum = 0.0, 0
    for names, t in log:
        ls, ns = 0.0, 0
        for n in names:
            ls += losses[n][t][0]
            ns += losses[n][t][1]
        loss_sum, n_sum = loss_sum + ls, n_sum + ns
    return loss_sum, n_sum


# ---------------------------------------------------------------- worker processes, step by step


class _Buffers:
    """Growable shared-memory float buffers, one per (stage, purpose); a grown one is sent to the peer once."""

    def __init__(self) -> None:
        self.bufs: dict[tuple, torch.Tensor] = {}

    def get(self, key: tuple, numel: int, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
        """A buffer of at least ``numel`` elements for ``key``; True when it is new (the peer must get it)."""
        buf = self.bufs.get(key)
        if buf is not None and buf.numel() >= numel and buf.dtype == dtype:
            return buf, False
        buf = self.bufs[key] = torch.empty(max(numel, 1), dtype=dtype).share_memory_()
        return buf, True


def _pack(bufs: _Buffers, key: tuple, tensors: list[torch.Tensor]) -> tuple[list[tuple[int, tuple]], Any]:
    """Copy ``tensors`` one after the other into the shared buffer ``key``; (offset, shape) of each, and
    the buffer itself when it is new (else None)."""
    total = sum(t.numel() for t in tensors)
    dtype = tensors[0].dtype if tensors else torch.float32
    buf, new = bufs.get(key, total, dtype)
    where, off = [], 0
    for t in tensors:
        n = t.numel()
        buf[off:off + n].view(t.shape).copy_(t)
        where.append((off, tuple(t.shape)))
        off += n
    return where, (buf if new else None)


def _unpack(buf: torch.Tensor, where: list[tuple[int, tuple]]) -> list[torch.Tensor]:
    out = []
    for off, shape in where:
        n = 1
        for d in shape:
            n *= d
        out.append(buf[off:off + n].view(shape))
    return out


def _serve_steps(conn: Any, inherited: list[Any], eng: Engine) -> None:
    """A step worker: runs forward and backward of its replicas of a stage on command (see StepPool)."""
    _start_worker(inherited)
    theirs: dict[tuple, torch.Tensor] = {}  # the parent's buffers: inputs and output gradients
    mine = _Buffers()                        # outputs and input gradients
    live: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        try:
            if msg[0] == "stop":
                return
            if msg[0] == "fwd":
                _, s, rows, where, new_buf, labels = msg
                if new_buf is not None:
                    theirs[(s, "in")] = new_buf
                xs = _unpack(theirs[(s, "in")], where)
                outs, losses, grads = [], [], []
                for r, x in zip(rows, xs):
                    rep = eng.replicas[s][r]
                    x = x.requires_grad_(eng.input_grad[s])
                    out = rep.module(x)
                    if labels is not None:  # the last stage: loss, backward and step right away
                        loss = eng.loss_fn(out, torch.from_numpy(labels[r]))
                        loss.backward()
                        losses.append(float(loss.detach()))
                        eng.opt_step(rep)
                        if x.requires_grad:  # e.g. an FPL trunk serving one front in this step
                            grads.append(x.grad)
                    else:
                        live[(s, r)] = (x, out)
                    outs.append(out.detach())
                where_out, buf = _pack(mine, (s, "out"), outs)
                where_g, gbuf = _pack(mine, (s, "ingrad"), grads) if grads else ([], None)
                conn.send(("ok", where_out, buf, losses, where_g, gbuf))
            elif msg[0] == "bwd":
                _, s, rows, where, new_buf = msg
                if new_buf is not None:
                    theirs[(s, "grad")] = new_buf
                gs = _unpack(theirs[(s, "grad")], where)
                grads = []
                for r, g in zip(rows, gs):
                    x, out = live.pop((s, r))
                    out.backward(g)
                    eng.opt_step(eng.replicas[s][r])
                    if x.requires_grad:
                        grads.append(x.grad)
                where_g, buf = _pack(mine, (s, "ingrad"), grads) if grads else ([], None)
                conn.send(("ok", where_g, buf))
        except BaseException as exc:  # report; the parent stops the run
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class StepPool(_Workers):
    """Worker processes that run a stage's one-stream replicas (e.g. FPL fronts) every step.

    For plans whose replicas meet step by step (FPL: fronts feed a shared trunk), the
    parent drives each step: it writes each worker's share of the inputs into shared
    memory, the workers run their replicas' forward passes (each replica on the weights
    and optimizer state of its rows in the stage's shared arena) and write the outputs
    back; the parent runs the rest of the step (the trunk), then sends the output
    gradients, and the workers run the backward passes and optimizer steps and return the
    input gradients when an earlier stage needs them. The parent records every action
    itself, in program order, as the sequential engine does.
    """

    def __init__(self, eng: Engine, workers: int) -> None:
        super().__init__(_serve_steps, (eng,), workers)
        self.mine = [_Buffers() for _ in range(workers)]     # inputs and output gradients, per worker
        self.theirs: list[dict[tuple, torch.Tensor]] = [{} for _ in range(workers)]
        self.chunks: dict[int, list[Any]] = {}  # stage -> this step's chunks, one per worker

    def forward(self, eng: Engine, s: int, groups: dict[int, list[str]], carry: dict[str, tuple],
                batch: dict[str, tuple[torch.Tensor, torch.Tensor]], last: bool) -> dict[int, tuple]:
        """Run stage ``s``'s one-stream replicas in the workers; returns replica -> (chunk, row) as vmap does."""
        if s not in eng.arenas:
            return {}
        solo = [(r, ms[0]) for r, ms in groups.items() if len(ms) == 1 and not carry[ms[0]][0].is_meta]
        if len(solo) < 2:
            return {}
        n = min(len(self.conns), len(solo))
        size = -(-len(solo) // n)
        parts = [solo[i:i + size] for i in range(0, len(solo), size)]
        sent = []
        for w, part in enumerate(parts):
            rows = [r for r, _ in part]
            where, buf = _pack(self.mine[w], (s, "in"), [carry[m][0].detach() for _, m in part])
            labels = {r: batch[m][1].numpy() for r, m in part} if last else None  # small: pickled
            self.conns[w].send(("fwd", s, rows, where, buf, labels))
            sent.append((w, part, where))
        out: dict[int, tuple] = {}
        self.chunks[s] = []
        for w, part, where in sent:
            _, where_out, buf, losses, where_g, gbuf = self._recv(w)
            if buf is not None:
                self.theirs[w][(s, "out")] = buf
            if gbuf is not None:
                self.theirs[w][(s, "ingrad")] = gbuf
            outs = _unpack(self.theirs[w][(s, "out")], where_out)
            ins = _unpack(self.mine[w].bufs[(s, "in")], where)
            chunk = VecChunk(s, [r for r, _ in part], [m for _, m in part], ins, outs, remote=self)
            chunk.worker = w
            self.chunks[s].append(chunk)
            if last:
                chunk.losses = torch.tensor(losses, dtype=torch.float32)
                chunk.done = chunk.stepped = True
                if where_g:
                    chunk.in_grads = _unpack(self.theirs[w][(s, "ingrad")], where_g)
            for i, (r, _) in enumerate(part):
                out[r] = (chunk, i)
        return out

    def backward(self, eng: Engine, chunk: Any, pending: dict[str, tuple]) -> None:
        """Send the output gradients of this step's chunks of ``chunk``'s stage to their workers (all at
        once, so they work side by side); they run backward and the optimizer steps."""
        s = chunk.stage
        todo = [c for c in self.chunks.get(s, []) if not c.done]
        for c in todo:
            where, buf = _pack(self.mine[c.worker], (s, "grad"), [pending[m][0] for m in c.members])
            self.conns[c.worker].send(("bwd", s, c.rows, where, buf))
        for c in todo:
            _, where_g, gbuf = self._recv(c.worker)
            if gbuf is not None:
                self.theirs[c.worker][(s, "ingrad")] = gbuf
            if where_g:
                c.in_grads = _unpack(self.theirs[c.worker][(s, "ingrad")], where_g)
            c.done = c.stepped = True
