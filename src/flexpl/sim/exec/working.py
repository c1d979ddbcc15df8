"""Working models [Note: working models]: FedAvg clients whose state does not outlive the round train
in turn on one module and optimizer per process, summed into FedAvg in place (``flexpl.sim.exec.fedavg_sum``).

:class:`WorkingModels` holds the ``Engine``'s operations for them; the Engine mixes it in.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from flexpl.config.training import OptimizerCfg
from flexpl.models import BlockModel, count_params
from flexpl.plan.spec import Layout
from flexpl.sim.exec import fedavg_sum as fold
from flexpl.sim.exec.fedavg_sum import FedAvgSum
from flexpl.sim.exec.stacked import Arena
from flexpl.sim.replica import make_optimizer, meta_copy
from flexpl.sim.state import ReplicaState

if TYPE_CHECKING:
    from flexpl.costs.trace import Event
    from flexpl.plan.spec import Replica


class WorkingModel:
    """The one module and optimizer that a working stage's clients train on in turn [Note: working models]."""

    def __init__(self, base: BlockModel, opt_cfg: OptimizerCfg, shared: bool) -> None:
        self.module = copy.deepcopy(base)
        # a one-row arena: the optimizer state exists from the start and is zeroed per client, as the
        # replicas' arenas do [Note: pre-made optimizer state], so the arithmetic is theirs
        self.arena = Arena([self.module], opt_cfg)
        self.opt = make_optimizer(self.module, opt_cfg)
        self.arena.bind(0, self.module, self.opt)
        self.twin = (meta_copy(self.module), None)
        # worker processes wait for their turn with at most this many finished clients kept aside
        self.sum = FedAvgSum(self.module.state_dict(), shared, max_pending=fold.MAX_PENDING if shared else None)
        self.bound: int | None = None       # the replica whose weights the module holds now
        self.trained = False                # ... and whether it has trained since they were loaded
        self.pos: dict[int, int] = {}       # replica index -> position in this round's FedAvg order
        self.orphans: dict[int, dict[str, torch.Tensor]] = {}  # trained before the order was known

    def client(self, spec: Replica) -> ReplicaState:
        """A client of this working stage: this module and optimizer, never shape-only [Note: working models].

        (Its fields set in one dict: 10,000 clients are 10,000 of these at set-up, made in a third of
        the dataclass ``__init__``'s time.)
        """
        st = ReplicaState.__new__(ReplicaState)
        st.__dict__ = {"spec": spec, "module": self.module, "opt": self.opt, "last_update": None,
                       "twin": self.twin, "shape_only": False}
        return st


def working_stages(layout: Layout, base: list[BlockModel], opt_cfg: OptimizerCfg,
                   is_local: Callable[[str], bool] | None, vector_chunk: int | None,
                   any_host: bool = False) -> list[int]:
    """Stages whose clients can train on one working model [Note: working models].

    Every data node's path runs on replicas of its own (so the simulator trains node after
    node), every FedAvg is over all replicas at the end of every round, optimizers are reset
    on every download, and the stage is here, has weights and no buffers (batch norm
    statistics are not averaged as weights). Anything else keeps a replica per client.
    ``is_local`` None: every node is here (no pass over the clients to ask).
    ``any_host``: the replicas of a data node's path may live on other nodes (SplitFed's server
    halves): the caller trains node after node itself (``engine.executor: ray``, whose workers
    train client by client while the parent only walks the round on shapes).
    """
    plan = layout.plan
    if (plan.junction != "batch" or plan.schedule != "lockstep" or plan.collect_data or vector_chunk
            or not opt_cfg.reset_on_sync):
        return []
    if not all(st.replication == "per_node" and (any_host or (st.host == "own" and not st.hosts))
               for st in plan.stages):
        return []
    if any(st.sync.kind not in ("none", "fedavg") or (st.sync.kind == "fedavg" and (
            st.sync.unit != "round" or st.sync.every != 1 or st.sync.scope != "all")) for st in plan.stages):
        return []
    out = [s for s, st in enumerate(plan.stages)
           if st.sync.kind == "fedavg" and layout.aggregators[s] is not None and len(layout.replicas[s]) > 1
           and (is_local is None or (all(is_local(r.host) for r in layout.replicas[s])
                                     and is_local(layout.aggregators[s])))
           and count_params(base[s]) > 0 and not any(True for _ in base[s].buffers())]
    # one FedAvg order for all of them: the same replica index for a data node in every stage
    if any(layout.serves[s] != layout.serves[out[0]] for s in out[1:]):
        return []
    return out


class WorkingModels:
    """The Engine's operations on working stages (``self`` is the Engine)."""

    def _glob_state(self, s: int) -> Callable[[], dict[str, torch.Tensor]]:
        return lambda: self.global_[s].state_dict()

    def _bind(self, s: int, rep: ReplicaState) -> None:
        """Stage ``s``'s working model now trains ``rep``: the previous client goes into the sum, ``rep``
        starts from the aggregator's weights with a fresh optimizer (what its download gave it)."""
        w = self.working[s]
        if w.bound == rep.spec.index:
            return
        self._release(s)
        w.arena.load_rows([0], self.global_[s].state_dict())
        w.arena.reset([0])
        w.arena.bind(0, w.module, w.opt)  # (again: a loaded checkpoint may have replaced the optimizer's state)
        w.bound = rep.spec.index

    def _release(self, s: int) -> None:
        """The client stage ``s``'s working model holds has finished: add it to the FedAvg sum (or keep it aside)."""
        w = self.working[s]
        if w.bound is None:
            return
        idx, w.bound = w.bound, None
        state = w.module.state_dict()
        pos = w.pos.get(idx)
        if pos is None:  # the round's FedAvg order is not known yet (no expect_round): keep a copy until the upload
            w.orphans[idx] = {k: v.detach().clone() for k, v in state.items()}
        else:
            w.sum.add(pos, state, self._glob_state(s))

    def expect_round(self, samples: dict[str, int], reset: bool = True) -> None:
        """The samples each data node will train on this round (before its first step).

        Stages trained on working models use it to add each client to the FedAvg sum as soon
        as it has trained; without it they keep every trained client aside until the upload.
        ``reset``: start the round's shared counters (the process that uploads; workers pass False).
        """
        for s, w in self.working.items():
            idx = sorted({self.layout.serves[s][n] for n in samples})
            weights = [sum(samples[m] for m in self.replicas[s][i].spec.members if m in samples) for i in idx]
            w.pos = {i: k for k, i in enumerate(idx)}
            w.bound, w.orphans = None, {}
            w.sum.begin(weights, len(idx), reset)

    def claim_order(self, samples: dict[str, int]) -> list[str]:
        """The data nodes with samples to train, in the order their clients enter the FedAvg sum."""
        s = next(iter(self.working))
        return sorted((n for n, k in samples.items() if k > 0), key=lambda n: self.layout.serves[s][n])

    def flush_working(self) -> None:
        """Put every client this process trained into the FedAvg sums, waiting for their turn (a worker's round end)."""
        for s, w in self.working.items():
            self._release(s)
            w.sum.flush(self._glob_state(s))

    def _download_working(self, s: int, reps: list[ReplicaState]) -> None:
        """``download`` of a working stage: the transfers are recorded; each client loads them when it trains."""
        agg = self.layout.aggregators[s]
        glob = self.global_[s].state_dict()
        for rep in reps:
            _, ev = self.transport.move_state(glob, agg, rep.host, "weights",
                                              [self.global_ev[s], rep.last_update], f"s{s}")
            rep.last_update = ev

    def _upload_working(self, s: int, reps: list[ReplicaState], weights: list[float],
                        keep: Callable[[int, list[tuple[int, int, Event]]], list[bool]] | None) -> None:
        """``upload`` of a working stage: the transfers are recorded as for replicas; the average is the sum
        built while the clients trained (bitwise fedavg's: same operations, same order)."""
        agg = self.layout.aggregators[s]
        w = self.working[s]
        self._release(s)
        like = w.module.state_dict()
        evs, spans = [], []
        for rep in reps:
            first = self.recorder.next_id
            _, ev = self.transport.move_state(like, rep.host, agg, "weights", [rep.last_update], f"s{s}")
            evs.append(ev)
            spans.append((first, self.recorder.next_id, ev))
        ok = keep(s, spans) if keep else [True] * len(reps)
        if not any(ok):
            w.pos, w.orphans = {}, {}
            w.sum.begin(None, 0)
            return
        if not all(ok):
            raise RuntimeError("an upload was refused, but working models keep no client's weights "
                               "(the simulator builds them only without failures)")
        idx = [r.spec.index for r in reps]
        glob = self._glob_state(s)
        if not w.pos:  # no expect_round: the order and weights are known now
            w.pos = {i: k for k, i in enumerate(idx)}
            w.sum.begin(weights, len(idx))
            for i in sorted(w.orphans, key=w.pos.__getitem__):
                w.sum.add(w.pos[i], w.orphans.pop(i), glob)
        elif idx != list(w.pos):
            raise RuntimeError("upload: the clients differ from the ones the round announced (expect_round)")
        self.global_[s].load_state_dict(w.sum.finish(weights, glob))
        w.pos, w.orphans = {}, {}  # the next round starts clean (its expect_round, or none)
        w.sum.begin(None, 0)
        self.global_ev[s] = self.recorder.compute(agg, self.aggregator.flops(len(reps), self.float_elements[s]),
                                                  evs, "aggregate", f"s{s}")
