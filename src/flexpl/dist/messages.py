"""Messages of a distributed run beside the measured work: gathers to rank 0, barriers, keepalives, evaluation.

They travel on their own tags (``TAG_AUX``, ``TAG_HOLD`` of :mod:`flexpl.dist.transport`)
and are not counted in the run's bytes. Part of :mod:`flexpl.dist`.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay inside the functions: the CLI imports this module for its parser
    import torch
    from torch import nn

    from flexpl.dist.transport import Comm
    from flexpl.sim.engine import Engine


# ---------------------------------------------------------------- evaluation on rank 0


def _eval_sources(eng: Engine) -> list[tuple[list[tuple[int, int]], str, nn.Module]]:
    """Distinct modules evaluation meets, in a fixed order: (their (stage, replica) keys, owner node, module)."""
    out: list[tuple[list[tuple[int, int]], str, nn.Module]] = []
    index: dict[int, int] = {}
    for s in range(len(eng.plan.stages)):
        ridxs = set(eng.layout.serves[s].values()) | ({0} if eng.features else set())
        for r in sorted(ridxs):
            mod = eng.eval_module(s, r)
            if id(mod) not in index:
                if eng.global_.get(s) is mod:
                    owner = eng.layout.aggregators[s]
                elif eng.layout.grouped(s):  # a group head's average
                    owner = eng.layout.agg_of[s][r]
                else:
                    owner = next(rep.host for rep in eng.replicas[s] if rep.module is mod)
                index[id(mod)] = len(out)
                out.append(([], owner, mod))
            out[index[id(mod)]][0].append((s, r))
    return out


def _eval_engine(eng: Engine, comm: Comm, rank_of: dict[str, int]) -> Engine | None:
    """Gather the evaluation weights to rank 0 (not measured); there, an engine view that evaluates them.

    Each distinct module a test sample meets (``Engine.eval_module`` of every stage and
    replica on the data nodes' paths) goes from its owner to rank 0 tensor by tensor.
    Rank 0 gets a shallow copy of its engine whose ``eval_module`` answers with real
    copies (shared where the engine shares them, so paths group as in the simulator), and
    evaluates with the simulator's own ``Engine.evaluate``. Other ranks get None.
    """
    from flexpl.dist.transport import TAG_AUX

    modules: dict[tuple[int, int], nn.Module] = {}
    for keys, owner, mod in _eval_sources(eng):
        o = rank_of[owner]
        if comm.rank == o and o != 0:
            for t in mod.state_dict().values():
                comm.send(t, 0, tag=TAG_AUX)
        elif comm.rank == 0:
            real = mod
            if o != 0:
                state = {k: comm.recv(v.shape, v.dtype, o, tag=TAG_AUX) for k, v in mod.state_dict().items()}
                real = copy.deepcopy(mod).to_empty(device="cpu")
                real.load_state_dict(state)
            modules.update(dict.fromkeys(keys, real))
    if comm.rank != 0:
        return None
    view = copy.copy(eng)
    view.eval_module = lambda s, ridx: modules[(s, ridx)]  # an instance attribute shadows the method
    return view


# ---------------------------------------------------------------- rank 0 and the others


def _point_to_root(comm: Comm, world: int, payload: torch.Tensor) -> list[torch.Tensor] | None:
    """Every rank sends ``payload`` (same shape everywhere) to rank 0; rank 0 returns all of them by rank."""
    from flexpl.dist.transport import TAG_AUX

    if comm.rank != 0:
        comm.send(payload, 0, tag=TAG_AUX)
        return None
    return [payload] + [comm.recv(payload.shape, payload.dtype, r, tag=TAG_AUX) for r in range(1, world)]


def _barrier(comm: Comm, world: int) -> None:
    """All ranks meet: everyone reports to rank 0, which then releases everyone (p2p, with timeouts)."""
    import torch

    from flexpl.dist.transport import TAG_AUX

    _point_to_root(comm, world, torch.zeros(1))
    if comm.rank == 0:
        for r in range(1, world):
            comm.send(torch.zeros(1), r, tag=TAG_AUX)
    else:
        comm.recv((1,), torch.float32, 0, tag=TAG_AUX)


def _while_rank0_works(comm: Comm, world: int, fn: Callable[[], Any]) -> Any:
    """Rank 0 runs ``fn`` (evaluation) while the others wait for it; returns ``fn()`` on rank 0.

    Evaluating the whole test set on one thread can take longer than ``engine.timeout_s``,
    which is meant for a peer that stopped, not for rank 0 doing its job. So rank 0 sends
    keepalives from a thread every quarter of the timeout, and the others keep waiting as
    long as they come; a rank 0 that dies still closes the connection at once.
    """
    import torch
    import torch.distributed as dist

    from flexpl.dist.transport import TAG_HOLD

    if comm.rank != 0:
        while float(comm.recv((1,), torch.float32, 0, tag=TAG_HOLD)[0]) == 0.0:
            pass  # a keepalive; 1.0 means rank 0 is done
        return None
    stop = threading.Event()
    beat = torch.zeros(1)

    def keepalive() -> None:
        while not stop.wait(comm.timeout.total_seconds() / 4):
            for r in range(1, world):
                try:  # directly, not through comm: these waits say nothing about rank 0's state
                    dist.isend(beat, r, tag=TAG_HOLD).wait(timeout=comm.timeout)
                except RuntimeError:
                    return  # the peer is gone; the main thread will find out
    thread = threading.Thread(target=keepalive, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        stop.set()
        thread.join()
    for r in range(1, world):
        comm.send(torch.ones(1), r, tag=TAG_HOLD)
    return result
