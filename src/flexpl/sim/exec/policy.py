"""How the simulator executes a round's replicas: one by one, in worker processes, or vectorized.

The plan, the step code and the trace are the same in every mode; only who does the
arithmetic changes (``engine.executor`` in a scenario, ``auto`` by default). This module
decides (:func:`choose`); :mod:`flexpl.sim.exec.processes` holds the worker processes and
:mod:`flexpl.sim.exec.vectorized` the vectorized FedAvg clients.

- ``sequential``: this process runs every replica in turn (torch's own threads inside ops).
- ``vectorized``: replicas of a stage that each take one stream of the same shape run
  together, ``torch.func.vmap`` over their stacked weights, in chunks of
  ``engine.vector_chunk`` (see ``Engine._vector_forward``), on one torch thread. Per-op
  overhead is paid once per chunk instead of once per replica, which is what small
  models are made of (larger ones run faster as plain matmuls: see ``_MAX_VECTOR_PARAMS``).
  FedAvg clients on working models train ``engine.vector_chunk`` at a time on one stacked
  working arena instead (``flexpl.sim.exec.vectorized``; ``auto`` picks that where it fits).
- ``processes``: for plans whose data-node paths share no replica (FedAvg, SplitFed; see
  :func:`separable`), ``engine.workers`` processes forked after setup, one thread each,
  train shares of the data nodes on the replicas' stacked weights in shared memory
  (``flexpl.sim.exec.stacked``), while this process walks the same steps on shapes only
  (``Engine.shadow``) and so records the very trace the sequential engine records.
  FedAvg clients on working models (flexpl.sim.exec.fedavg_sum) are taken from one queue in FedAvg
  order, by the workers and by this process, which trains the ones its walk reaches first.
- ``ray`` (asked for only): FedAvg/SplitFed clients dealt to Ray actors on one machine or a
  cluster, each with one working model per stage, returning one partial FedAvg sum each,
  while this process walks the round on shapes (``flexpl.sim.exec.ray_pool``, [Note: Ray workers]);
  FPL with per-edge trunks by edge group, each group on one actor for the whole run ([Note: Ray groups]).

[Note: mode equivalence] ``processes`` does each replica's arithmetic exactly as
``sequential`` does with one torch thread (bitwise equal then; with more threads, ops
may sum in another order). ``vectorized`` batches each replica's matmuls and convolutions
over replicas, so weights agree to float round-off: tests hold them to 1e-5 relative
after several rounds. ``ray`` adds the FedAvg sum per actor instead of client by client
(bitwise with one actor), so weights agree to float round-off too. Costs (FLOPs, bytes, time, energy) are the same in every mode.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from flexpl.config.scenario import Scenario
    from flexpl.plan.layout import Plan

MODES = ("sequential", "processes", "vectorized", "ray")
# Modules a vectorized stage may hold: vmap turns these into batched matmuls and pointwise
# ops, which beat a loop over replicas on a CPU. Convolutions become grouped convolutions,
# which are slower on CPU than a loop (measured in the issue that asked for this), so
# ``auto`` leaves them to processes.
_VECTOR_FRIENDLY = (nn.Linear, nn.ReLU, nn.Flatten, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Identity, nn.Sequential)
# [Note: step workers] FPL-style plans run their fronts in workers step by step (StepPool);
# every step then waits for the slowest worker and for the trunk. Side by side on the
# project's 2-core machine (60k Fashion-MNIST samples, one round against one centralized
# epoch): the CNN (24.6 MFLOP per sample forward) ran at 0.79-0.89 of the epoch in workers
# against 0.94-1.03 in one process; the MLP (0.4 MFLOP) at 1.04-1.31 in workers against
# 0.96-1.05 in one process. So auto uses step workers only from this much work per sample.
_MIN_STEP_FLOPS = 5e6
# Caps the worker count of every run in this process (``flexpl sweep --jobs N`` sets 1 in
# its cell workers: the cells already share the cores).
WORKERS_ENV = "FLEXPL_WORKERS"
# Below this much training work per round, forking workers costs more than it saves.
_MIN_PROCESS_FLOPS = 2e9
# vmap pays off where per-op overhead dominates: small Linear stages. On this project's
# 2-core test machine (torch 2.13 CPU, one thread) a chunk of 32 replicas of a 64-32 MLP
# on 8x8 digits ran 3.6x faster vmapped than in a loop, while the 784-200-200 MLP (199k
# parameters) ran 1.6x slower (batched matmuls are slower than a loop of plain ones at
# that size), so auto vectorizes only stages up to this many parameters per replica.
_MAX_VECTOR_PARAMS = 50_000


@dataclass
class Choice:
    """The execution mode of a run and why it was picked."""

    mode: str
    reason: str
    workers: int = 1


def separable(plan: Plan) -> bool:
    """True when every data node's path runs on replicas of its own, in lockstep, with no step-level sync.

    Then a round's arithmetic splits by data node (FedAvg, SplitFed), whatever nodes host
    the replicas; only the clock couples them, and the clock is recorded by the walk.
    """
    return (plan.junction == "batch" and plan.schedule == "lockstep" and not plan.collect_data
            and all(st.replication == "per_node" and st.sync.kind in ("none", "fedavg")
                    and not (st.sync.kind == "fedavg" and st.sync.unit == "step") for st in plan.stages))


def stepwise(plan: Plan) -> bool:
    """True when some stage has one replica per data node running side by side in each lockstep step
    (e.g. FPL's fronts), so that worker processes can run them step by step (:class:`StepPool`)."""
    return (plan.schedule == "lockstep" and plan.junction == "batch" and not plan.collect_data
            and any(st.replication == "per_node" for st in plan.stages))


def vector_friendly(module: nn.Module) -> bool:
    """True when every layer of ``module`` is one that vmap runs fast on a CPU (Linear and pointwise)."""
    from flexpl.models import BlockModel

    return all(isinstance(m, (*_VECTOR_FRIENDLY, BlockModel, nn.ModuleDict)) for m in module.modules())


def choose(scn: Scenario, plan: Plan, stage_modules: list[nn.Module], n_replicas: list[int],
           flops_per_sample: float, samples: int) -> Choice:
    """The mode ``engine.executor`` asks for, or for ``auto`` the one expected to be fastest here."""
    eng = scn.engine
    cores = os.cpu_count() or 1
    n_data = len(scn.data_nodes)
    workers = min(eng.workers or cores, n_data, int(os.environ.get(WORKERS_ENV) or n_data))
    asked = eng.executor
    if asked == "ray":  # the set-up checks the plan (flexpl.sim.exec.ray_pool.supported) and sizes the actors
        return Choice("ray", "asked")
    from flexpl.models.aggregate import make_aggregator

    if make_aggregator(scn.training.aggregator).proximal:  # the client term lives in Engine.opt_step (one process)
        return Choice("sequential", "the aggregator adds a proximal term to every local step (FedProx): sequential")
    if asked in ("auto", "processes") and any(
            n > 1 and any(True for _ in stage_modules[s].buffers()) for s, n in enumerate(n_replicas)):
        # replicas with buffers (batch norm statistics) are not stacked in arenas, and worker
        # processes train only stacked rows: their updates would not come back
        return Choice("sequential", "replicated stages hold buffers (batch norm statistics), which worker "
                      "processes cannot share: sequential")
    if asked != "auto":
        if asked == "processes" and not (separable(plan) or stepwise(plan)):
            return Choice("sequential", "processes asked, but no stage of this plan has replicas that run "
                          "side by side in a step: sequential")
        if asked == "processes" and workers < 2:
            return Choice("sequential", "processes asked with fewer than 2 workers: sequential")
        return Choice(asked, "asked", workers if asked == "processes" else 1)
    multi = [s for s, n in enumerate(n_replicas) if n > 1]
    small = all(sum(p.numel() for p in stage_modules[s].parameters()) <= _MAX_VECTOR_PARAMS for s in multi)
    if plan.schedule == "lockstep" and multi and small and max(n_replicas) >= 4 \
            and all(vector_friendly(stage_modules[s]) for s in multi):
        return Choice("vectorized", f"{max(n_replicas)} replicas of small Linear-only stages run in lockstep")
    # a round trains the sampled clients' share of the samples (training.clients_per_round)
    work = 3.0 * flops_per_sample * samples * scn.training.local_epochs * min(scn.training.clients_per_round, 1.0)
    if separable(plan) and workers >= 2 and work >= _MIN_PROCESS_FLOPS:
        return Choice("processes", f"independent data-node paths: a share of them per worker, {workers} cores",
                      workers)
    if stepwise(plan) and workers >= 2 and work >= _MIN_PROCESS_FLOPS and flops_per_sample >= _MIN_STEP_FLOPS:
        return Choice("processes", f"per-node replicas run side by side every step, {workers} cores", workers)
    if stepwise(plan):
        return Choice("sequential", "per-node replicas meet a shared stage every step and a sample is too little "
                      "work to pay for a worker round trip per step (engine.executor=processes runs them anyway)")
    if not separable(plan):
        why = "no stage has replicas that run side by side"
    elif workers < 2:
        why = "one core or one data node"
    else:
        why = f"too little work per round ({work:.1e} FLOPs) to pay for worker processes"
    return Choice("sequential", why)


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads, then restore the count."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
