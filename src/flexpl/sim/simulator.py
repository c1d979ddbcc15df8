"""The round loop: one readable page that runs any plan on the virtual clock.

Setup (data, topology, model, plan, engine), then for every round: pick the clients,
download averaged weights, run the schedule's training steps, upload and average (the
round's program, ``flexpl.plan.program``, run by ``engine.runner``), put the round's trace on
the clock, evaluate. Strategies differ only in their plan.
"""

from __future__ import annotations

import copy
import functools
import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch

from flexpl.config.scenario import Scenario
from flexpl.costs.bill import Totals, bill, node_link_totals, round_rows
from flexpl.costs.clock import schedule
from flexpl.costs.evaluation import eval_flops
from flexpl.costs.flops import count_fwd_bwd
from flexpl.costs.targets import reached_all
from flexpl.costs.trace import COMPUTE, Event, Recorder, Trace
from flexpl.data import Dataset, load_data
from flexpl.data.batching import batches, equal_steps, mix_seed, select_clients
from flexpl.data.partition import Summaries, partition_flat, validation_split
from flexpl.errors import Diverged, UserError
from flexpl.models import (
    build_model,
    check_cuts,
    count_params,
    default_cut,
    model_cuts,
    state_bytes,
)
from flexpl.plan.device_cuts import front_costs
from flexpl.plan.layout import build_plan, place
from flexpl.plan.program import end_blocks, start_blocks, step_blocks, uploads_after, walk
from flexpl.plan.spec import Plan
from flexpl.sim import checkpoint, failures
from flexpl.sim.device import check_precision, resolve_device, train_channels_last
from flexpl.sim.engine import Engine
from flexpl.sim.evaluate import extract_patch, patch_input
from flexpl.sim.exec import policy, processes, ray_pool
from flexpl.sim.exec import vectorized as vecwork
from flexpl.sim.node_data import NodeData
from flexpl.sim.plugins import configure
from flexpl.sim.runner import TensorRunner, participants
from flexpl.sim.state import ReplicaState
from flexpl.sim.summary import make_summary
from flexpl.sim.transport import SimTransport
from flexpl.system.topology import Topology


def build_topology(scn: Scenario) -> Topology:
    """Profiles of every node and link, resolved with their inline overrides (``Topology.from_scenario``)."""
    return Topology.from_scenario(scn)


def _place(t: torch.Tensor, local: bool) -> torch.Tensor:
    return t if local else torch.empty(t.shape, dtype=t.dtype, device="meta")


def _data_nodes(data: Dataset, names: list[str], flat: np.ndarray, offsets: np.ndarray,
                is_local: Callable[[str], bool] | None) -> list[NodeData]:
    """Each data node reads its rows ``flat[offsets[i]:offsets[i+1]]`` of the whole training set: no copy of
    the samples, and no index or labels made per node until it trains (:meth:`NodeData.rows`)."""
    flat_t, off = torch.from_numpy(flat), offsets.tolist()
    x, y, rows = data.train_x, data.train_y, NodeData.rows
    nodes = [rows(n, x, y, i, flat_t, off[i], off[i + 1]) for i, n in enumerate(names)]
    for i, n in enumerate(names if is_local is not None else ()):
        if not is_local(n):  # shapes only, on the meta device
            k = off[i + 1] - off[i]
            nodes[i] = NodeData(n, torch.empty((k,) + tuple(x.shape[1:]), dtype=x.dtype, device="meta"),
                                torch.empty((k,) + tuple(y.shape[1:]), dtype=y.dtype, device="meta"), i)
    return nodes


@dataclass
class Setup:
    """Everything a run needs before its first round."""

    scn: Scenario
    data: Dataset
    topo: Topology
    plan: Plan
    engine: Engine
    nodes: list[NodeData]
    parts_summary: Sequence[dict]  # per data node, made when read (flexpl.data.partition.Summaries)
    model_params: int
    model_bytes: int
    recorder: Recorder
    executor: policy.Choice = field(default_factory=lambda: policy.Choice("sequential", "default"))
    pool: processes.ProcessPool | ray_pool.RayPool | None = None
    steps: processes.StepPool | None = None
    val: tuple[torch.Tensor, torch.Tensor] | None = None  # held-out training samples (data.validation_fraction)
    vecwork: vecwork.VecWork | None = None  # vectorized working models (flexpl.sim.exec.vectorized)
    flops_per_sample: float = 0.0  # forward FLOPs of one sample through the whole model (weighs clients)
    # centralized on the dist backend: every data node's real samples, from which a resumed run rebuilds
    # the server's union (its own nodes hold other nodes' samples as shapes only)
    all_nodes: list[NodeData] | None = None


def _model_spec(scn: Scenario) -> tuple[str, Any]:
    spec = scn.model
    return (spec if isinstance(spec, str) else str(spec.get("name", ""))), spec


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _without_gc(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with the cyclic garbage collector paused (and resumed after, if it was on).

    [Note: set-up without the GC] Set-up makes an object or two per data node; with a few
    hundred thousand objects already alive (torch, a scenario of 10,000 nodes, an earlier run),
    each full collection those allocations trigger rescans all of them: 10,000 clients took
    0.2 s of CPU instead of 0.06 s. Nothing is lost: cycles made meanwhile are collected later.
    """
    @functools.wraps(fn)
    def inner(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()
    return inner


@_without_gc
def setup(scn: Scenario, transport_factory: Callable[[Recorder], Any] = SimTransport,
          dataset: Dataset | None = None, is_local: Callable[[str], bool] | None = None,
          ray_worker: bool = False) -> Setup:
    """Load data, resolve the topology and plan, build the model and the engine.

    ``is_local`` says which nodes this process runs for real; the others' replicas and
    data live on the meta device (shapes only). Default: every node is local.
    ``ray_worker``: the set-up of a Ray actor of ``engine.executor: ray`` (it trains on
    ``engine.device``; the run's own process walks and aggregates on the CPU).
    """
    local = is_local or (lambda node: True)
    data = dataset or load_data(scn.data, scn.seed)
    topo = build_topology(scn)
    name, spec = _model_spec(scn)
    probe = build_model(spec, data.input_shape, data.num_classes, seed=scn.seed)
    n_blocks = len(probe.block_names)
    plan = build_plan(scn.strategy, scn.plan.model_dump(exclude_none=True) if scn.plan else None, topo,
                      n_blocks, default_cut(spec, probe),
                      front=front_costs(probe, data.input_shape, model_cuts(spec, probe)[1]))
    check_cuts(spec, probe, [st.start for st in plan.stages])  # register_model(cuts=...)
    data_nodes = scn.data_nodes
    grid = None
    all_nodes = None
    if plan.junction == "features":
        # every branch sees its own patch of every training sample
        grid, shape = patch_input(data.input_shape, len(data_nodes))
        first = plan.stages[1].start
        full = build_model(spec, shape, data.num_classes, seed=scn.seed, junction_block=first,
                           branches=len(data_nodes))
        # every branch sees the same samples, so they are held out once, for all branches
        keep, held = validation_split([torch.arange(len(data.train_y)).numpy()], scn.data.validation_fraction,
                                      scn.seed)
        idx = torch.from_numpy(keep[0])
        nodes = [NodeData(n, _place(extract_patch(data.train_x[idx], grid, i).contiguous(), local(n)),
                          _place(data.train_y[idx], local(n)), 0) for i, n in enumerate(data_nodes)]
        parts = (np.tile(keep[0], len(data_nodes)), np.arange(len(data_nodes) + 1, dtype=np.int64) * len(keep[0]))
    else:
        full = probe
        flat, offsets = partition_flat(data.train_y.numpy(), len(data_nodes), scn.data.partition.kind, seed=scn.seed,
                                       alpha=scn.data.partition.alpha,
                                       shards_per_node=scn.data.partition.shards_per_node,
                                       min_size=scn.data.partition.min_samples)
        if scn.data.validation_fraction > 0:
            parts, held = validation_split(np.split(flat, offsets[1:-1]), scn.data.validation_fraction, scn.seed)
            flat = np.concatenate(parts)
            offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        nodes = _data_nodes(data, data_nodes, flat, offsets, is_local)
        if is_local is not None and plan.collect_data:  # views of the whole set, nothing copied
            all_nodes = _data_nodes(data, data_nodes, flat, offsets, None)
        parts = (flat, offsets)
    if plan.collect_data:
        data_nodes = [topo.server]
    layout = place(plan, topo, data_nodes)
    recorder = Recorder(topo)
    fwd = 0.0
    simulated = is_local is None and transport_factory is SimTransport  # (not the dist backend, not a shape walk)
    if simulated:
        stages = [full.blocks[full.block_names[st.start]] if st.end - st.start == 1 else
                  torch.nn.Sequential(*[full.blocks[b] for b in full.block_names[st.start:st.end]])
                  for st in plan.stages]
        # work per sample of the whole model (only needed to weigh worker processes)
        fwd = count_fwd_bwd(full, (1,) + tuple(data.input_shape), False)[0] if plan.junction == "batch" else 0
        choice = policy.choose(scn, plan, stages, [len(r) for r in layout.replicas], fwd, len(data.train_y))
        fit = vecwork.fits(scn, layout, stages, None)  # (every node is here: no pass over the clients)
        choice = vecwork.prefer(scn, choice, layout, stages, None, fit)  # [Note: vectorized working models]
        if choice.mode == "ray":  # [Note: Ray workers] the actors train; this process walks on shapes
            fit = False
        dev = resolve_device(scn.engine.device) if choice.mode != "ray" or ray_worker else torch.device("cpu")
        check_precision(scn.training.precision, dev)
        if (dev.type != "cpu" or scn.training.precision != "fp32") and choice.mode not in ("sequential", "ray"):
            if scn.engine.executor != "auto":
                raise UserError(f"engine.executor: {scn.engine.executor} runs fp32 on the CPU only; with "
                                f"engine.device={scn.engine.device} and training.precision={scn.training.precision} "
                                "use engine.executor=sequential (or auto)")
            choice, fit = policy.Choice("sequential", f"on {dev} in {scn.training.precision}: sequential"), False
    else:  # the distributed backend and shape-only walks run replicas where they live, on the CPU
        if scn.engine.device.startswith("cuda"):
            raise UserError(f"engine.device: {scn.engine.device} is for the simulator; the distributed backend "
                            "and shape-only walks run on the CPU: use engine.device=cpu (or auto)")
        choice, fit = policy.Choice("sequential", "distributed backend or shape-only walk"), False
        dev = torch.device("cpu")
    full = full.to(dev)  # every replica, working model and global copy is a copy of it, on its device
    if scn.engine.train_memory_format == "channels_last":  # ... in channels-last layout too (flexpl.sim.device)
        if not simulated or plan.junction != "batch":
            raise UserError("engine.train_memory_format: channels_last is for the simulator's plans with a batch "
                            "junction (not the distributed backend, shape-only walks or plan.junction=features); "
                            "use engine.train_memory_format=contiguous")
        train_channels_last(full, tuple(data.input_shape))
    # [Note: vectorized working models] working-model plans train K clients at a time on one stacked arena
    stacked_work = choice.mode == "vectorized" and fit
    engine = Engine(layout, full, scn.training.optimizer, transport_factory(recorder), recorder, grid, is_local,
                    shared=choice.mode == "processes",
                    vector_chunk=scn.engine.vector_chunk if choice.mode == "vectorized" and not stacked_work else None,
                    # [Note: working models] reproduce FedAvg's sum only, and keep no client for a failure to drop
                    working=not scn.failures.active and scn.training.aggregator.kind == "fedavg",
                    working_any_host=choice.mode == "ray")
    if choice.mode == "ray" and not (ray_pool.supported(engine) or ray_pool.grouped(scn, engine)):
        raise ray_pool.unsupported(scn, plan)
    engine.device, engine.precision = dev, scn.training.precision
    engine.eval_memory_format = scn.engine.eval_memory_format  # flexpl.sim.evaluate: evaluation's layout
    configure(engine, scn)  # training.loss and training.aggregator (flexpl.sim.plugins)
    val = None
    if scn.data.validation_fraction > 0:  # evaluated like the test set, full images on every path
        vidx = torch.from_numpy(np.concatenate(held))
        val = (data.train_x[vidx], data.train_y[vidx])
    return Setup(scn, data, topo, plan, engine, nodes, Summaries(data.train_y.numpy(), *parts, data.num_classes),
                 count_params(probe), state_bytes(probe), recorder, choice, val=val, all_nodes=all_nodes,
                 vecwork=vecwork.VecWork(engine, scn.engine.vector_chunk, vecwork.thread_count(scn)) if stacked_work
                 else None, flops_per_sample=float(fwd))


@dataclass
class RunResult:
    """Outcome of a run: the summary, one row per round, and each round's trace with its clock times."""

    summary: dict[str, Any]
    rounds: list[dict[str, Any]]
    traces: list[tuple[Trace, list[float], list[float]]] = field(default_factory=list)


def _participants(engine: Engine, s: int, selected: list[str]) -> list[ReplicaState]:
    return participants(engine, s, selected)


def _evaluate_on(eng: Engine, pool: ray_pool.RayPool | None, which: str, x: torch.Tensor, y: torch.Tensor,
                 weights: dict[str, float]) -> dict[str, Any]:
    """The ``which`` set ("test" or "val", ``x`` and ``y`` here) evaluated here, or by ``pool``'s actors."""
    return pool.evaluate(eng, which, weights, y) if pool is not None else eng.evaluate(x, y, weights)


def train_round(eng: Engine, by_name: dict[str, NodeData], plan_batches: dict[str, list[torch.Tensor]],
                fed_step: list[int], rnd: int = 0,
                log: list[tuple[list[str], int]] | None = None) -> tuple[float, int, dict[str, int]]:
    """Run one round's training steps in the plan's schedule order; returns loss sum, samples, samples per node.

    The steps are the round program's (``flexpl.plan.program.step_blocks``: lockstep, sequential
    with the relay between nodes, round_robin; step-level FedAvg every ``every`` steps), run
    by the tensor runner (``engine.runner``). ``log`` receives the (nodes, batch index) of
    every step, in order.
    """
    plan = eng.plan
    selected = list(plan_batches)
    # [Note: node-major order] No replica or node is shared between data nodes, so
    # lockstep and node-by-node give the same arithmetic and the same clock; node by
    # node keeps one model warm in the cache.
    node_major = eng.independent_paths and not fed_step and not eng.vector_chunk
    sizes = {n: [len(idx) for idx in plan_batches[n]] for n in selected}
    blocks = step_blocks(plan, selected, sizes, node_major, [(s, plan.stages[s].sync.every) for s in fed_step])
    runner = TensorRunner(eng, by_name, plan_batches, rnd, log)
    walk(blocks, runner)
    return runner.loss_sum, runner.n_sum, runner.seen


def _play_round(st: Setup, totals: Totals, rnd: int, attempt: int, selected: list[str],
                rf: failures.RoundFailures | None, synced_before: bool, by_name: dict[str, NodeData],
                fed_round: list[int], fed_step: list[int]) -> tuple[float, int, list[str], bool]:
    """One attempt at a round: downloads, training steps, uploads. Returns loss sum, samples, who took part, synced."""
    scn, eng, plan, tr, rec = st.scn, st.engine, st.plan, st.scn.training, st.recorder
    rec.slowdown = rf.slowdown if rf else {}
    rec.loss = rf.loss if rf else {}
    rec.loss_rng = np.random.default_rng(mix_seed(scn.seed, rnd, attempt, "loss")) if rf else None
    absent = rf.absent if rf else set()
    present = [n for n in selected if n not in absent]
    reachable = [n for n in selected if not rf or n not in rf.cut_off]
    # the round's program (flexpl.plan.program): downloads, steps (train_round), uploads
    walk(start_blocks(plan, present, synced_before), TensorRunner(eng, reachable=reachable))
    loss_sum, n_sum, seen = 0.0, 0, {}
    if present:
        steps = equal_steps((len(nd) for nd in by_name.values()), tr.batch_size) \
            if tr.batching == "equal_steps" else None
        plan_batches = {n: batches(by_name[n], scn.seed, rnd, tr.local_epochs, tr.batch_size,
                                   tr.max_steps_per_round, steps) for n in present}
        # clients on working models join the FedAvg sum as they finish [Note: working models]
        eng.expect_round({n: sum(len(b) for b in bs) for n, bs in plan_batches.items()})
        if st.pool is not None:
            loss_sum, n_sum, seen = st.pool.train_round(eng, plan_batches, train_round, fed_step, rnd)
        elif st.vecwork is not None:  # K clients at a time on one stacked working arena
            loss_sum, n_sum, seen = st.vecwork.train_round(eng, by_name, plan_batches, train_round, fed_step, rnd)
        elif eng.vector_chunk:  # batched small ops: one thread is faster (see flexpl.sim.exec.policy)
            with policy.threads(1):
                loss_sum, n_sum, seen = train_round(eng, by_name, plan_batches, fed_step, rnd)
        else:
            loss_sum, n_sum, seen = train_round(eng, by_name, plan_batches, fed_step, rnd)
        if not math.isfinite(loss_sum):
            raise diverged(st, rnd, loss_sum)
    synced = uploads_after(plan, rnd, tr.rounds)
    if synced:
        t0 = totals.sim_time

        def on_time(s: int, spans: list[tuple[int, int, Event]]) -> list[bool]:
            """Uploads that reach the aggregator within the round's deadline; the rest is wasted work."""
            if not (rf and scn.failures.deadline_s):
                return [True] * len(spans)
            _, ends = schedule(rec.trace, t0)
            ok = [ev is None or ends[ev - rec.base] - t0 <= scn.failures.deadline_s for _, _, ev in spans]
            for (first, stop, _), good, rep in zip(spans, ok, _participants(eng, s, present)):
                if not good:
                    label = f"s{s}r{rep.spec.index}"
                    rec.mark_wasted(first, lambda i, e=stop - rec.base: i < e)
                    # its training in this round was for nothing too
                    rec.mark_wasted(rec.base, lambda i, lab=label: rec.trace.kind[i] == COMPUTE
                                    and rec.trace.label[i] == lab)
            return ok

        walk(end_blocks(plan, present, True), TensorRunner(eng, keep=on_time, seen=seen))
    return loss_sum, n_sum, present, synced


def diverged(st: Setup, rnd: int, loss: float) -> Diverged:
    """The one-line error for a non-finite training loss in round ``rnd``, naming the stage where it began."""
    eng = st.engine
    s = eng.bad_stage if eng.bad_stage is not None else len(st.plan.stages) - 1
    stage = st.plan.stages[s]
    hosts = sorted({r.host for r in eng.replicas[s]})
    where = hosts[0] if len(hosts) == 1 else f"{len(hosts)} nodes"
    return Diverged(f"training diverged in round {rnd}: the training loss is {loss}, first non-finite output "
                    f"at stage {s} (blocks {stage.start}-{stage.end - 1}, on {where}); lower "
                    "training.optimizer.lr or set training.optimizer.clip_norm (rounds completed so far are kept)")


def run(scn: Scenario, on_round: Callable[[dict[str, Any]], None] | None = None,
        st: Setup | None = None, keep_traces: bool = False,
        evaluate: Callable[[Setup], dict[str, float]] | None = None,
        checkpoint_dir: Path | checkpoint.Store | None = None, resume: bool = False,
        on_round_bill: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None] | None = None) -> RunResult:
    """Train ``scn`` on the simulator and return its costs and accuracy per round.

    ``evaluate`` replaces the test-set evaluation (the planner passes one that returns
    nothing; the distributed backend evaluates on rank 0). With ``checkpoint_dir``, the
    run state is saved there every ``training.checkpoint_every`` rounds; with ``resume``,
    the run continues from that checkpoint and ends bit-identical to an uninterrupted run.
    ``checkpoint_dir`` may also be a :class:`flexpl.sim.checkpoint.Store` naming the files
    (the distributed backend's per-rank files).
    ``on_round_bill(node_rows, link_rows)`` is given each round's own per-node and per-link
    figures (:func:`flexpl.costs.bill.round_rows`) before the round's checkpoint is saved and
    before ``on_round``; a resumed run gives them for the rounds it runs, not the restored ones.
    """
    t_wall = time.perf_counter()
    st = st or setup(scn)
    # [Note: frozen set-up] The objects alive now (torch, the scenario, the set-up: 400,000 of them for
    # 10,000 clients) live for the whole run. Left to the cyclic GC, every full collection rescans them
    # all (0.14 s at 10,000 clients, a few times a run, wherever a round or the summary happens to
    # allocate enough); frozen, collections see only what the rounds make. Unfrozen on the way out.
    gc.freeze()
    try:
        return _run(scn, st, t_wall, on_round, keep_traces, evaluate, checkpoint_dir, resume, on_round_bill)
    finally:
        gc.unfreeze()


def _run(scn: Scenario, st: Setup, t_wall: float, on_round: Callable[[dict[str, Any]], None] | None,
         keep_traces: bool, evaluate: Callable[[Setup], dict[str, float]] | None,
         checkpoint_dir: Path | checkpoint.Store | None, resume: bool,
         on_round_bill: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None] | None = None,
         ) -> RunResult:
    """:func:`run` after set-up."""
    eng, topo, plan, tr = st.engine, st.topo, st.plan, scn.training
    totals = Totals.empty(topo)
    rows: list[dict[str, Any]] = []
    synced_last_round = True
    ev: dict[str, float] = {}
    first = 1
    store = checkpoint_dir if isinstance(checkpoint_dir, checkpoint.Store) or checkpoint_dir is None \
        else checkpoint.Store(checkpoint_dir)
    if resume and store is not None:
        blob = checkpoint.load(store.load_path(), scn.digest())
        store.restored(blob)
        checkpoint.load_engine_state(eng, blob["engine"])
        totals, rows, ev = checkpoint.totals_from(blob["totals"]), blob["rows"], blob["last_eval"]
        synced_last_round, first = blob["synced"], blob["round"] + 1
        torch.set_rng_state(blob["torch_rng"])
        for row in rows:  # the caller sees every round, restored ones first
            if on_round:
                on_round(row)
    train = st.nodes
    if plan.collect_data:  # centralized: the server trains on the union of the data nodes' samples
        if first == 1:  # round 1's program starts with Collect (once: a round redone after a failure keeps it)
            runner = TensorRunner(eng, nodes=st.nodes)
            walk(start_blocks(plan, [], False, collect_to=topo.server), runner)
            train = [runner.collected]
        else:  # a resumed run: shipped before the checkpoint
            here = st.all_nodes if st.all_nodes is not None and eng.is_local(topo.server) else st.nodes
            train = [eng.collect(here, topo.server, record=False)]
    by_name = {nd.name: nd for nd in train}
    weights = {nd.name: float(len(nd)) for nd in train}
    fed_round = [s for s, x in enumerate(plan.stages) if x.sync.kind == "fedavg" and x.sync.unit == "round"]
    fed_step = [s for s, x in enumerate(plan.stages) if x.sync.kind == "fedavg" and x.sync.unit == "step"]
    if st.executor.mode == "processes" and first <= tr.rounds:
        if policy.separable(plan):  # a share of the data nodes per worker, for a whole round
            st.pool = processes.ProcessPool(eng, by_name, st.executor.workers)
        else:  # the per-node replicas of each step, side by side
            st.steps = eng.remote = processes.StepPool(eng, st.executor.workers)
    if st.executor.mode == "ray" and first <= tr.rounds:  # [Note: Ray workers]
        st.pool = ray_pool.RayPool(scn, eng, by_name, st.flops_per_sample, setup)
    # checkpoints are written in the background; the run waits for the last one (see checkpoint.Writer)
    writer = checkpoint.Writer() if store is not None and store.background else None
    done = False
    try:
        rows, totals, ev, traces = _rounds(st, first, totals, rows, ev, synced_last_round, by_name, weights,
                                           fed_round, fed_step, on_round, keep_traces, evaluate, store,
                                           writer, on_round_bill)
        if isinstance(st.pool, ray_pool.RayPool):  # the run's last state here [Note: Ray groups]
            st.pool.pull(eng)
        done = True
    except Diverged as exc:  # the rounds completed so far, summed up (rows and totals grow in place)
        last = rows[-1] if rows else {}
        exc.rows = list(rows)
        exc.summary = make_summary(st, totals, rows, {k: last.get(k) for k in ("accuracy_min", "accuracy_ensemble")},
                                   time.perf_counter() - t_wall)
        exc.summary["diverged"] = str(exc)
        raise
    finally:
        if writer is not None:  # a failed write raises here unless another error is on its way out
            writer.close(raise_errors=done)
        for pool in (st.pool, st.steps):
            if pool is not None:
                pool.close()
        st.pool = st.steps = eng.remote = None
    summary = make_summary(st, totals, rows, ev, time.perf_counter() - t_wall)
    return RunResult(summary, rows, traces)


def _rounds(st: Setup, first: int, totals: Totals, rows: list[dict[str, Any]], ev: dict[str, float],
            synced_last_round: bool, by_name: dict[str, NodeData], weights: dict[str, float],
            fed_round: list[int], fed_step: list[int], on_round: Callable[[dict[str, Any]], None] | None,
            keep_traces: bool, evaluate: Callable[[Setup], dict[str, float]] | None,
            store: checkpoint.Store | None, writer: checkpoint.Writer | None = None,
            on_round_bill: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None] | None = None,
            ) -> tuple[list[dict[str, Any]], Totals, dict[str, float], list]:
    """Rounds ``first`` .. last of :func:`run`."""
    scn, eng, topo, plan, tr = st.scn, st.engine, st.topo, st.plan, st.scn.training
    # the per-node and per-link figures so far (a resumed run's: its checkpoint's), for on_round_bill
    before = node_link_totals(totals, topo, totals.sim_time, scn.energy.include_idle, scn.costs.include_eval) \
        if on_round_bill is not None else None
    train = list(by_name.values())
    fail = scn.failures
    traces = []
    eval_cache: dict[tuple, tuple[int, tuple[int, ...]]] = {}
    if scn.evaluation.stop_at_target and reached_all(rows, scn.evaluation.targets):
        first = tr.rounds + 1  # a resumed run that had already stopped at its target
    for rnd in range(first, tr.rounds + 1):
        selected = [n.name for n in train] if plan.collect_data else select_clients(
            [n.name for n in train], tr.clients_per_round, scn.seed, rnd)
        lr = eng.set_round(rnd, tr.rounds)
        for attempt in range(fail.max_redos + 1):
            rf = failures.draw(fail, topo, eng.layout, scn.seed, rnd, attempt) if fail.active else None
            snapshot = copy.deepcopy(checkpoint.engine_state(eng)) if rf and rf.host_failed else None
            round_start = st.recorder.next_id
            loss_sum, n_sum, present, synced_now = _play_round(st, totals, rnd, attempt, selected, rf,
                                                              synced_last_round, by_name, fed_round, fed_step)
            if snapshot is None:
                break
            # the node holding a shared stage failed: the round is lost and redone from its start
            st.recorder.mark_wasted(round_start, lambda i: True)
            totals.add_round(st.recorder.take(), topo)
            checkpoint.load_engine_state(eng, snapshot)
        else:
            raise UserError(f"failures.host_failure: round {rnd} failed {fail.max_redos + 1} times in a row; "
                            "lower the probability or raise failures.max_redos")
        synced_last_round = synced_now
        trace = st.recorder.take()
        starts, ends = totals.add_round(trace, topo)
        if keep_traces:
            traces.append((trace, starts, ends))
        if rnd % tr.eval_every == 0 or rnd == tr.rounds:
            # [Note: Ray evaluation] FPL's groups are evaluated by the actors that train them, side by side
            pool = st.pool if isinstance(st.pool, ray_pool.RayPool) and st.pool.groups is not None else None
            if pool is not None and evaluate:  # a custom evaluation reads this process's fronts [Note: Ray groups]
                pool.pull(eng)
                pool = None
            n_eval = 0  # samples evaluated: billed apart from training (costs.include_eval adds it)
            if evaluate:
                ev = evaluate(st)
                n_eval = len(st.data.test_y) if ev else 0
            else:
                ev = _evaluate_on(eng, pool, "test", st.data.test_x, st.data.test_y, weights) if tr.eval_test else {}
                n_eval = len(st.data.test_y) if tr.eval_test else 0
                if st.val is not None:  # the held-out training samples (data.validation_fraction)
                    val = _evaluate_on(eng, pool, "val", st.val[0], st.val[1], weights)
                    ev.update({"val_accuracy": val["accuracy"], "val_loss": val["loss"]})
                    n_eval += len(st.val[1])
            if n_eval:
                totals.add_eval(eval_flops(eng, n_eval, tuple(st.data.input_shape), list(weights), eval_cache), topo)
        b = bill(totals, topo, totals.sim_time, scn.energy.include_idle, scn.costs.include_eval, per_node=False)
        row = {"round": rnd, "accuracy": ev.get("accuracy", float("nan")), "loss": ev.get("loss", float("nan")),
               "accuracy_min": ev.get("accuracy_min", float("nan")),
               "accuracy_ensemble": ev.get("accuracy_ensemble", float("nan")),
               "train_loss": loss_sum / max(n_sum, 1), "clients": len(present),
               "flops": b["flops"], "bytes": totals.bytes, "sim_time_s": totals.sim_time,
               "energy_j": b["energy_j"], "energy_j_compute": totals.energy_compute,
               "energy_j_comm": totals.energy_comm, "energy_j_idle": b["energy_j_idle"],
               "eval_flops": b["eval_flops"], "eval_energy_j": b["eval_energy_j"],
               "wasted_flops": totals.wasted_flops,
               "wasted_bytes": totals.wasted_bytes, "wasted_energy_j": totals.wasted_energy}
        if st.val is not None:
            row["val_accuracy"] = ev.get("val_accuracy", float("nan"))
            row["val_loss"] = ev.get("val_loss", float("nan"))
        row["lr"] = lr
        # energy spent on the data-holding devices so far (what cost-to-target reports as device_energy_j), on
        # the terms of energy_j and summary.json's per_node: with idle energy and evaluation when the scenario
        # includes them
        row["device_energy_j"] = sum(
            totals.node[n]["energy_j"] + (b["idle_j"][n] if scn.energy.include_idle else 0.0)
            + (totals.node[n].get("eval_energy_j", 0.0) if scn.costs.include_eval else 0.0) for n in topo.data_nodes)
        rows.append(row)
        # evaluation.stop_at_target: this round reached the highest target, so it is the last one
        stop = scn.evaluation.stop_at_target and reached_all(rows, scn.evaluation.targets)
        if on_round_bill is not None and before is not None:  # before the checkpoint: see RunWriter.round_bill
            now = node_link_totals(totals, topo, totals.sim_time, scn.energy.include_idle, scn.costs.include_eval)
            on_round_bill(round_rows(rnd, now[0], before[0], "node"), round_rows(rnd, now[1], before[1], "link"))
            before = now
        if store is not None and tr.checkpoint_every and (rnd % tr.checkpoint_every == 0
                                                          or rnd == tr.rounds or stop):
            if isinstance(st.pool, ray_pool.RayPool):  # the fronts the actors train [Note: Ray groups]
                st.pool.pull(eng)
            checkpoint.save(store.save_path(rnd), scenario_sha256=scn.digest(), round_index=rnd,
                            rows=rows, totals=totals, last_eval=ev, synced=synced_last_round, eng=eng,
                            writer=writer, extra=store.extra())
        if on_round:
            on_round(row)
        if stop:
            break
    return rows, totals, ev, traces
