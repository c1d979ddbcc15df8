"""The engine: stage replicas, the shared training step, syncs, and evaluation.

One ``Engine`` holds the state of a run (replicas, optimizers, aggregated models) and
offers the operations a round is made of: ``train_step`` (forward through the stages,
loss, backward, optimizer steps), ``download``/``upload`` (FedAvg), ``relay`` (split
learning) and ``collect_data`` (centralized). Tensors cross node boundaries only through
the transport, so the same code serves the simulator and the distributed backend, and
every crossing and every forward/backward is recorded for the cost model. The step is
walked by ``flexpl.plan.step`` (as the planner walks it on shapes); its tensor hooks are in
``flexpl.sim.tensor_step`` (see [Note: stage boundaries] there).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from flexpl.config.training import OptimizerCfg
from flexpl.costs.flops import FlopCache, optimizer_flops
from flexpl.costs.trace import Event, Recorder
from flexpl.models import BlockModel, count_params
from flexpl.models.aggregate import CROSS_ENTROPY, Aggregator, FedAvg, Loss, proximal_grad
from flexpl.plan.spec import Layout
from flexpl.sim.evaluate import Evaluation
from flexpl.sim.exec.stacked import Arena
from flexpl.sim.exec.working import WorkingModel, WorkingModels, working_stages
from flexpl.sim.node_data import NodeData
from flexpl.sim.replica import clip_coefficients, lr_at, make_optimizer, meta_copy, shell_copy
from flexpl.sim.state import ReplicaState, VecChunk
from flexpl.sim.tensor_step import TensorStep


def stage_module(full: BlockModel, start: int, end: int) -> BlockModel:
    """A copy of blocks ``[start, end)``; state-dict keys stay those of the full model (``BlockModel.slice``)."""
    return full.slice(start, end)


class Engine(TensorStep, WorkingModels, Evaluation):
    """Run state of a plan on a topology, and the operations rounds are built from."""

    # the training loss and the FedAvg stages' aggregation rule (set per run by flexpl.sim.plugins.configure)
    loss_fn: Loss = CROSS_ENTROPY
    aggregator: Aggregator = FedAvg()
    # FedProx: (stage, replica) -> the weights it last downloaded (only when aggregator.proximal)
    anchors: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def __init__(self, layout: Layout, full_model: BlockModel, opt_cfg: OptimizerCfg, transport,
                 recorder: Recorder, patch_grid: tuple[int, int] | None = None,
                 is_local: Callable[[str], bool] | None = None, shared: bool = False,
                 vector_chunk: int | None = None, working: bool = False, working_any_host: bool = False) -> None:
        """``shared``: stacked replica state in shared memory (worker processes); ``vector_chunk``:
        run up to that many replicas of a stage together with ``vmap`` (None: one by one); ``working``:
        clients whose state does not outlive the round train on one working model [Note: working models];
        ``working_any_host``: also where a path's replicas live on other nodes (``working_stages``' ``any_host``)."""
        self.layout = layout
        self.plan = layout.plan
        self.opt_cfg = opt_cfg
        self.transport = transport
        self.recorder = recorder
        self.flops = FlopCache()
        self.patch_grid = patch_grid
        # [Note: meta replicas] A replica hosted on a node this process does not run lives on
        # the meta device: the step code still runs it, on shapes only, so every process
        # (and the planner, where no node is local) walks the same program and records the
        # same trace, while real arithmetic happens only where the replica lives.
        self.is_local = is_local or (lambda node: True)
        self.all_local = is_local is None  # (no pass over the replicas to ask each one)
        self.features = self.plan.junction == "features"
        n_stages = len(self.plan.stages)
        self.junction_stage = next((s for s in range(1, n_stages)
                                    if len(layout.replicas[s]) < len(layout.replicas[s - 1])), None)
        base = [stage_module(full_model, st.start, st.end) for st in self.plan.stages]
        # [Note: working models] (flexpl.sim.exec.fedavg_sum): stages whose replicas get no state of their own
        self.working: dict[int, WorkingModel] = {}
        for s in working_stages(layout, base, opt_cfg, is_local, vector_chunk, working_any_host) if working else []:
            self.working[s] = WorkingModel(base[s], opt_cfg, shared)
        self._build_replicas(base, opt_cfg, shared)
        self.vector_chunk = vector_chunk
        # the current round's learning rate (flexpl.sim.replica.lr_at); in shared memory for worker processes,
        # which are forked once and read it at every step
        self.lr_now = torch.tensor([float(opt_cfg.lr)], dtype=torch.float64)
        if shared:
            self.lr_now.share_memory_()
        self.remote: Any = None  # a StepPool of worker processes, set by the simulator (processes mode)
        self._out_shapes: dict[tuple, tuple[tuple[int, ...], torch.dtype, bool]] = {}
        has_params = [count_params(m) > 0 for m in base]
        # [Note: FLOP convention] a replica's optimizer step, billed with its backward pass
        self.opt_flops = [optimizer_flops(sum(p.numel() for p in m.parameters() if p.requires_grad), opt_cfg.name,
                                          opt_cfg.momentum, opt_cfg.weight_decay) for m in base]
        self.float_elements = [sum(v.numel() for v in m.state_dict().values() if v.is_floating_point())
                               for m in base]
        self.input_grad = [any(has_params[:s]) for s in range(n_stages)]
        self._build_globals(base, shared)
        # every data node's path runs on replicas of its own, on its own node (e.g. FedAvg)
        self.independent_paths = not self.features and all(
            st.replication == "per_node" and st.host == "own" and not st.hosts for st in self.plan.stages)
        self.relay_holder: str | None = None
        self.bad_stage: int | None = None  # after a step with a non-finite loss: the first stage that output one
        self.stream_ready: dict[str, Event] = {}

    def _arena_stage(self, s: int, base: list[BlockModel]) -> bool:
        """Whether stage ``s`` keeps its replicas stacked in an arena ([Note: arenas])."""
        reps = self.layout.replicas[s]
        return (s not in self.working and len(reps) > 1
                and (self.all_local or all(self.is_local(r.host) for r in reps))
                and count_params(base[s]) > 0 and not any(True for _ in base[s].buffers()))

    def _build_replicas(self, base: list[BlockModel], opt_cfg: OptimizerCfg, shared: bool) -> None:
        """Every replica of every stage (own copy, arena row or meta shell) with its optimizer; the arenas."""
        layout = self.layout
        self.replicas: list[list[ReplicaState]] = []
        for s, reps in enumerate(layout.replicas):
            states = []
            stacked = self._arena_stage(s, base)
            for spec in reps:
                if s in self.working:  # one module and optimizer for all of them
                    states.append(self.working[s].client(spec))
                    continue
                if stacked:  # the arena below stacks base's weights and gives each replica its own row
                    mod = shell_copy(base[s])
                elif self.is_local(spec.host):
                    mod = copy.deepcopy(base[s])
                else:
                    mod = meta_copy(base[s])
                states.append(ReplicaState(spec, mod, None if stacked else make_optimizer(mod, opt_cfg)))
            self.replicas.append(states)
        # [Note: arenas] stages with several replicas, all here, keep them stacked (flexpl.sim.exec.stacked)
        self.arenas: dict[int, Arena] = {}
        for s, states in enumerate(self.replicas):
            if self._arena_stage(s, base):
                arena = self.arenas[s] = Arena([r.module for r in states], opt_cfg, shared)
                for i, r in enumerate(states):
                    r.opt = make_optimizer(r.module, opt_cfg)
                    arena.bind(i, r.module, r.opt)

    def _build_globals(self, base: list[BlockModel], shared: bool = False) -> None:
        """The aggregators' averaged copies: one per FedAvg stage, or one per group head (scope "group")."""
        layout = self.layout
        n_stages = len(self.plan.stages)
        # the aggregator's copy of every FedAvg stage (what is downloaded and evaluated)
        self.global_: dict[int, BlockModel] = {
            s: copy.deepcopy(base[s]) if self.is_local(layout.aggregators[s]) else copy.deepcopy(base[s]).to("meta")
            for s in range(n_stages) if layout.aggregators[s] is not None}
        for s in self.working:  # worker processes load it into their working models: shared when they are forked
            if shared:
                self.global_[s].share_memory()
        self.global_ev: dict[int, Event] = dict.fromkeys(self.global_)
        # stages averaged per group (sync scope "group"): one averaged copy at every group head
        self.group_global: dict[tuple[int, str], BlockModel] = {}
        for s in range(n_stages):
            if layout.grouped(s):
                for agg in dict.fromkeys(layout.agg_of[s].values()):
                    m = copy.deepcopy(base[s])
                    self.group_global[(s, agg)] = m if self.is_local(agg) else m.to("meta")
        self.group_ev: dict[tuple[int, str], Event] = dict.fromkeys(self.group_global)

    # ------------------------------------------------------------ the training step (flexpl.plan.step, engine.tensor_step)

    def set_round(self, rnd: int, rounds: int) -> float:
        """Set the learning rate every optimizer step of round ``rnd`` uses; returns it."""
        lr = lr_at(self.opt_cfg, rnd, rounds)
        self.lr_now.fill_(lr)
        return lr

    def opt_step(self, rep: ReplicaState) -> None:
        """Replica ``rep``'s optimizer step at the current round's learning rate, its gradient clipped first
        (``clip_norm``: the L2 norm over the replica's parameters, i.e. per stage), then zero its gradients."""
        opt = rep.opt
        if opt is None:
            return
        lr = float(self.lr_now[0])
        for group in opt.param_groups:
            group["lr"] = lr
        if self.aggregator.proximal and (rep.spec.stage, rep.spec.index) in self.anchors:  # FedProx
            proximal_grad(rep.module.named_parameters(), self.anchors[(rep.spec.stage, rep.spec.index)],
                          self.aggregator.proximal)
        if self.opt_cfg.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], self.opt_cfg.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def _shape_out(self, s: int, module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        """What stage ``s`` would output for ``inp``, as a meta tensor (output shapes cached per input shape)."""
        key = (s, tuple(inp.shape), inp.dtype)
        hit = self._out_shapes.get(key)
        if hit is None:
            with torch.no_grad():
                y = module(torch.empty(inp.shape, dtype=inp.dtype, device="meta"))
            needs = self.input_grad[s] or any(p.requires_grad for p in module.parameters())
            hit = self._out_shapes[key] = (tuple(y.shape), y.dtype, needs)
        return torch.empty(hit[0], dtype=hit[1], device="meta", requires_grad=hit[2])

    # ------------------------------------------------------------ vectorized replicas

    def _vector_forward(self, s: int, groups: dict[int, list[str]],
                        carry: dict[str, tuple[torch.Tensor, str, Event]]) -> dict[int, tuple[VecChunk, int]]:
        """Run stage ``s``'s replicas that take one stream each, stacked by input shape, in chunks with ``vmap``.

        [Note: vectorized replicas] Replica ``r`` of a chunk computes ``functional_call(stage,
        rows r of the arena, its input)``: the same function of the same numbers as running
        its module, batched over replicas (``vmap`` turns each matmul into one batched matmul,
        so results agree to float round-off, not bit for bit). The caller still records every
        replica's transfers and computes one by one, in program order, so the trace is the
        one of the sequential engine.
        """
        arena = self.arenas.get(s)
        if arena is None:
            return {}
        buckets: dict[tuple, list[tuple[int, str]]] = {}
        for ridx, members in groups.items():
            if len(members) == 1:
                x = carry[members[0]][0]
                if not x.is_meta:
                    buckets.setdefault((tuple(x.shape), x.dtype), []).append((ridx, members[0]))
        out: dict[int, tuple[VecChunk, int]] = {}
        template = self.replicas[s][0].module
        size = max(int(self.vector_chunk or 1), 1)

        def one(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(template, params, (x,))

        for items in buckets.values():
            if len(items) < 2:
                continue
            items.sort()
            for c in range(0, len(items), size):
                part = items[c:c + size]
                rows = [r for r, _ in part]
                x = torch.stack([carry[m][0].detach() for _, m in part]).requires_grad_(self.input_grad[s])
                params = arena.take(rows)
                y = torch.func.vmap(one)(params, x)
                chunk = VecChunk(s, rows, [m for _, m in part], list(x.unbind(0)), list(y.unbind(0)), x, params, y)
                for i, r in enumerate(rows):
                    out[r] = (chunk, i)
        return out

    def _vector_backward(self, chunk: VecChunk, last: int, pending: dict[str, tuple[torch.Tensor, str, Event]],
                         batch: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Backward of a whole chunk at once, then its optimizer step (stacked for SGD, per replica otherwise)."""
        if chunk.stage == last:
            y = torch.stack([batch[m][1] for m in chunk.members])
            losses = self.loss_fn.per_replica(chunk.out, y)
            losses.sum().backward()
            chunk.losses = losses.detach()
        else:
            chunk.out.backward(torch.stack([pending[m][0] for m in chunk.members]))
        if chunk.x.requires_grad:
            chunk.in_grads = list(chunk.x.grad.unbind(0))
        arena = self.arenas[chunk.stage]
        grads = {n: t.grad for n, t in chunk.params.items()}
        if self.opt_cfg.clip_norm is not None and self.opt_cfg.name == "sgd":  # (Adam: in opt_step, per replica)
            # each replica's own norm, as clip_grad_norm_ on each replica
            k = len(chunk.rows)
            sq = sum(g.reshape(k, -1).pow(2).sum(1) for g in grads.values())
            coef = clip_coefficients(sq.sqrt(), self.opt_cfg.clip_norm)
            grads = {n: g * coef.view((k,) + (1,) * (g.dim() - 1)) for n, g in grads.items()}
        if self.opt_cfg.name == "sgd":
            arena.sgd_step(chunk.rows, grads, float(self.lr_now[0]))
            chunk.stepped = True
        else:
            for i, r in enumerate(chunk.rows):
                named = dict(self.replicas[chunk.stage][r].module.named_parameters())
                for n, g in grads.items():
                    named[n].grad = g[i]
        chunk.params = {}
        chunk.done = True

    # ------------------------------------------------------------ shape-only walks

    @contextmanager
    def shadow(self, nodes: set[str]) -> Iterator[None]:
        """Inside the block, the replicas serving ``nodes`` are meta copies without optimizers.

        ``train_step`` then walks those nodes' steps on shapes only: it records the same
        trace and changes no weights (the worker processes of ``flexpl.sim.exec.processes`` do
        the arithmetic). Each replica must serve only nodes in ``nodes`` or none of them.
        """
        swapped: list[tuple[ReplicaState, BlockModel, torch.optim.Optimizer | None, bool]] = []
        try:
            for s, reps in enumerate(self.replicas):
                for ridx in sorted({self.layout.serves[s][n] for n in nodes if n in self.layout.serves[s]}):
                    rep = reps[ridx]
                    if rep.twin is None:
                        rep.twin = (meta_copy(rep.module), None)
                    swapped.append((rep, rep.module, rep.opt, rep.shape_only))
                    rep.module, rep.opt = rep.twin
                    rep.shape_only = True
            yield
        finally:
            for rep, mod, opt, flag in swapped:
                rep.module, rep.opt, rep.shape_only = mod, opt, flag

    def absorb_optimizer_state(self) -> None:
        """After optimizers loaded a saved state (a checkpoint), move it back into the arenas."""
        for s, arena in self.arenas.items():
            for i, r in enumerate(self.replicas[s]):
                arena.absorb(i, r.module, r.opt)

    # ------------------------------------------------------------ syncs

    def _reset_opt(self, rep: ReplicaState) -> None:
        if not self.opt_cfg.reset_on_sync:
            return
        arena = self.arenas.get(rep.spec.stage)
        if arena is not None:  # zeroed in place [Note: pre-made optimizer state]
            arena.reset([rep.spec.index])
        else:
            rep.opt = make_optimizer(rep.module, self.opt_cfg)

    def _by_aggregator(self, s: int, reps: list[ReplicaState]) -> dict[str, list[ReplicaState]]:
        """``reps`` of a per-group averaged stage by their group head (in order of first appearance)."""
        out: dict[str, list[ReplicaState]] = {}
        for r in reps:
            out.setdefault(self.layout.agg_of[s][r.spec.index], []).append(r)
        return out

    def _download_group(self, s: int, reps: list[ReplicaState]) -> None:
        """``download`` for sync scope "group": each replica gets its group head's average."""
        for agg, grp in self._by_aggregator(s, reps).items():
            glob = self.group_global[(s, agg)].state_dict()
            for rep in grp:
                state, ev = self.transport.move_state(glob, agg, rep.host, "weights",
                                                      [self.group_ev[(s, agg)], rep.last_update], f"s{s}")
                arena = self.arenas.get(s) if getattr(self.transport, "zero_copy", False) else None
                self._anchor(rep, state)
                if arena is None:
                    rep.module.load_state_dict(state)
                    self._reset_opt(rep)
                else:
                    arena.load_rows([rep.spec.index], glob)
                    if self.opt_cfg.reset_on_sync:
                        arena.reset([rep.spec.index])
                rep.last_update = ev

    def _upload_group(self, s: int, reps: list[ReplicaState], weights: list[float],
                      keep: Callable[[int, list[tuple[int, int, Event]]], list[bool]] | None) -> None:
        """``upload`` for sync scope "group": every replica to its group head, averaged there per group."""
        states, evs, spans = [], [], []
        arena = self.arenas.get(s)
        for rep in reps:
            first = self.recorder.next_id
            mine = arena.row_state(rep.spec.index) if arena is not None else rep.module.state_dict()
            agg = self.layout.agg_of[s][rep.spec.index]
            state, ev = self.transport.move_state(mine, rep.host, agg, "weights", [rep.last_update], f"s{s}")
            states.append(state)
            evs.append(ev)
            spans.append((first, self.recorder.next_id, ev))
        ok = keep(s, spans) if keep else [True] * len(reps)
        for agg in self._by_aggregator(s, reps):
            pick = [i for i, r in enumerate(reps) if ok[i] and self.layout.agg_of[s][r.spec.index] == agg]
            if not pick:
                continue
            self.group_global[(s, agg)].load_state_dict(self.aggregator.aggregate(
                self.group_global[(s, agg)].state_dict(), [states[i] for i in pick], [weights[i] for i in pick],
                f"s{s}@{agg}"))
            self.group_ev[(s, agg)] = self.recorder.compute(agg, self.aggregator.flops(len(pick), self.float_elements[s]),
                                                          [evs[i] for i in pick], "aggregate", f"s{s}")

    def _anchor(self, rep: ReplicaState, state: dict[str, torch.Tensor]) -> None:
        """FedProx: remember the weights ``rep`` just downloaded (its proximal term's centre)."""
        if self.aggregator.proximal and not rep.shape_only:
            if not self.anchors:  # the class default is shared: this engine gets its own
                self.anchors = {}
            self.anchors[(rep.spec.stage, rep.spec.index)] = {k: v.detach().clone() for k, v in state.items()}

    def download(self, s: int, reps: list[ReplicaState]) -> None:
        """Send stage ``s``'s aggregated weights from its aggregator to ``reps`` (FedAvg, start of a round)."""
        if self.layout.grouped(s):
            return self._download_group(s, reps)
        if s in self.working:
            return self._download_working(s, reps)
        agg = self.layout.aggregators[s]
        assert agg is not None
        arena = self.arenas.get(s) if getattr(self.transport, "zero_copy", False) else None
        glob = self.global_[s].state_dict()
        for rep in reps:
            state, ev = self.transport.move_state(glob, agg, rep.host, "weights",
                                                  [self.global_ev[s], rep.last_update], f"s{s}")
            self._anchor(rep, state)
            if arena is None:
                rep.module.load_state_dict(state)
                self._reset_opt(rep)
            rep.last_update = ev
        if arena is not None and reps:  # every row at once: the same copies
            rows = [r.spec.index for r in reps]
            arena.load_rows(rows, glob)
            if self.opt_cfg.reset_on_sync:
                arena.reset(rows)

    def upload(self, s: int, reps: list[ReplicaState], weights: list[float],
               keep: Callable[[int, list[tuple[int, int, Event]]], list[bool]] | None = None) -> None:
        """Send ``reps``' weights to the aggregator and average them there, weighted by ``weights``.

        ``keep(stage, [(first action id, end action id, arrival event) per upload])`` may refuse late
        uploads (a round deadline); refused ones were sent but are not averaged.
        """
        if self.layout.grouped(s):
            return self._upload_group(s, reps, weights, keep)
        if s in self.working:
            return self._upload_working(s, reps, weights, keep)
        agg = self.layout.aggregators[s]
        assert agg is not None
        states, evs, spans = [], [], []
        arena = self.arenas.get(s)
        for rep in reps:
            first = self.recorder.next_id
            mine = arena.row_state(rep.spec.index) if arena is not None else rep.module.state_dict()
            state, ev = self.transport.move_state(mine, rep.host, agg, "weights", [rep.last_update], f"s{s}")
            states.append(state)
            evs.append(ev)
            spans.append((first, self.recorder.next_id, ev))
        ok = keep(s, spans) if keep else [True] * len(reps)
        if not any(ok):
            return
        pick = [i for i, k in enumerate(ok) if k]
        self.global_[s].load_state_dict(self.aggregator.aggregate(
            self.global_[s].state_dict(), [states[i] for i in pick], [weights[i] for i in pick], f"s{s}"))
        self.global_ev[s] = self.recorder.compute(agg, self.aggregator.flops(len(pick), self.float_elements[s]),
                                                  [evs[i] for i in pick], "aggregate", f"s{s}")

    def relay(self, to_node: str) -> None:
        """Hand every relay stage's weights from the current holder to ``to_node`` (split learning)."""
        holder = self.relay_holder
        self.relay_holder = to_node
        if holder is None or holder == to_node:
            return
        for s, st in enumerate(self.plan.stages):
            if st.sync.kind != "relay":
                continue
            src = self.replicas[s][self.layout.serves[s][holder]]
            dst = self.replicas[s][self.layout.serves[s][to_node]]
            state, ev = self.transport.move_state(src.module.state_dict(), src.host, dst.host, "weights",
                                                  [src.last_update, dst.last_update], f"s{s}")
            dst.module.load_state_dict(state)
            self._reset_opt(dst)
            dst.last_update = ev

    def collect(self, nodes: list[NodeData], dst: str, record: bool = True) -> NodeData:
        """Ship every data node's raw samples and labels to ``dst`` (centralized training); returns the union there.

        ``record=False`` rebuilds the union without moving anything (a resumed run, whose
        upload happened before the checkpoint); shapes only where ``dst`` is not this process's.
        """
        if not record:
            xs, ys = [nd.x for nd in nodes], [nd.y for nd in nodes]
            if not self.is_local(dst):  # the dist backend: the union lives on dst's rank only
                xs = [torch.empty(t.shape, dtype=t.dtype, device="meta") for t in xs]
                ys = [torch.empty(t.shape, dtype=t.dtype, device="meta") for t in ys]
            return NodeData(dst, torch.cat(xs), torch.cat(ys), 0)
        xs, ys = [], []
        for nd in nodes:
            xs.append(self.transport.move(nd.x, nd.name, dst, "data", [], "data")[0])
            ys.append(self.transport.move(nd.y, nd.name, dst, "data", [], "data")[0])
        return NodeData(dst, torch.cat(xs), torch.cat(ys), 0)

def path_state(engine: Engine, node: str) -> dict[str, torch.Tensor]:
    """The full model's state dict as a test sample on ``node``'s path sees it (keys of the full model)."""
    out: dict[str, torch.Tensor] = {}
    for s in range(len(engine.plan.stages)):
        out.update(engine.eval_module(s, engine.layout.serves[s][node]).state_dict())
    return out
