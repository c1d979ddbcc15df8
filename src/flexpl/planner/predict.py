"""The Planner: predicted costs of plan candidates for one scenario."""

from __future__ import annotations

import gc
import math
import time
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from flexpl.config.load import apply_strategy_overrides
from flexpl.config.plan import PlanCfg
from flexpl.config.scenario import Scenario
from flexpl.config.training import TrainingCfg
from flexpl.costs.bill import Totals, bill
from flexpl.costs.flops import optimizer_flops
from flexpl.costs.trace import COMPUTE
from flexpl.data import Dataset, load_data
from flexpl.data.batching import equal_steps, select_clients
from flexpl.data.partition import partition_flat
from flexpl.errors import UserError
from flexpl.models import check_cuts, default_cut, model_cuts
from flexpl.models.aggregate import make_aggregator, resolve_loss
from flexpl.plan.layout import build_plan, place
from flexpl.plan.program import relay_holder_after, relays, uploads_after
from flexpl.planner.candidates import Candidate, enumerate_candidates
from flexpl.planner.curves import CUMULATIVE, CumulativeBill
from flexpl.planner.placement import (
    PlanContext,
    RoundCost,
    WalkedRound,
    _add_scaled,
    _copy_totals,
    _merged,
    _per,
    _round_synced,
)
from flexpl.planner.shapes import StageCosts, StageFront, batch_sizes
from flexpl.planner.walk import ShapeWalk
from flexpl.sim.evaluate import patch_input
from flexpl.sim.plugins import prox_flops
from flexpl.system.topology import Topology


@dataclass
class Prediction:
    """One candidate's predicted costs: the CSV row, plus per-node detail."""

    row: dict[str, Any]
    peak_memory: dict[str, int]
    per_node: dict[str, dict[str, float]]
    per_link: dict[str, dict[str, float]]
    fast_clock: bool
    raw_bytes: int = 0  # raw samples that left a data node, all rounds (raw_bytes_per_round x rounds)


class Planner:
    """Predicts the costs of plan candidates for one scenario, sharing data sizes and stage costs."""

    def __init__(self, scn: Scenario, dataset: Dataset | None = None) -> None:
        import numpy as np

        self.scn = scn
        self.data = dataset or load_data(scn.data, scn.seed)
        self.topo = Topology.from_scenario(scn)
        spec = scn.model
        self.model_name = spec if isinstance(spec, str) else str(spec.get("name", ""))
        self.costs = StageCosts(spec, self.data.num_classes, scn.seed)
        loss = resolve_loss(scn.training.loss)
        self.costs.loss_fn = None if loss.default else loss
        self.aggregator = make_aggregator(scn.training.aggregator)
        self.plain = (self.data.input_shape, None, 1)
        self.n_blocks = len(self.costs.model(self.plain).block_names)
        self.default_cut = default_cut(spec, self.costs.model(self.plain))

        meta = self.costs.model(self.plain)
        # the -ecut rules' costs (flexpl.plan.device_cuts.FrontCosts), from the stage counts the candidates share
        self.front = StageFront(self.costs, self.plain, self.data.input_shape, model_cuts(spec, meta)[1])
        d = scn.data
        _, offsets = partition_flat(self.data.train_y.numpy(), len(self.topo.data_nodes), d.partition.kind,
                                    seed=scn.seed, alpha=d.partition.alpha,
                                    shards_per_node=d.partition.shards_per_node, min_size=d.partition.min_samples)
        self.samples = dict(zip(self.topo.data_nodes, np.diff(offsets).tolist()))
        self.x_esize = self.data.train_x.element_size()
        self.y_esize = self.data.train_y.element_size()
        self._walks: dict[tuple, WalkedRound] = {}
        self._contexts: dict[str, PlanContext] = {}
        self._training: dict[str, Any] = {}  # strategy -> its training section (training_for)
        # candidates cost_candidates could not cost here: {"plan", "family", "reason"} (skipped.csv)
        self.skipped: list[dict[str, str]] = []
        # learning classes of the costed candidates (flexpl.planner.classes; set by cost_candidates)
        self.learning_keys: dict[str, str] = {}
        self.n_classes = 0

    def candidates(self) -> list[Candidate]:
        """Every candidate of :func:`enumerate_candidates`, plus the scenario's own plan if it is explicit."""
        out = enumerate_candidates(self.topo, self.n_blocks)

        allowed = model_cuts(self.scn.model, self.costs.model(self.plain))[1]
        if allowed is not None:  # register_model(cuts=...): only the cuts the model allows
            def ok(c: Candidate) -> bool:
                cut = (c.plan or {}).get("cut")
                return cut is None or all(k in allowed for k in (cut if isinstance(cut, list) else [cut]))
            out = [c for c in out if ok(c)]
        if self.scn.plan is not None:
            own = self.scn.plan.model_dump(exclude_none=True, exclude_defaults=True)
            out.insert(0, Candidate(f"scenario: {self.scn.strategy} {own}", self.scn.strategy, own, "scenario"))
        return out

    def optimizer_for(self, strategy: str | None) -> Any:
        """The optimizer a run of ``strategy`` uses: the scenario's, with that strategy's ``strategy_overrides``."""
        return self.training_for(strategy).optimizer

    def training_for(self, strategy: str | None) -> Any:
        """The training section a run of ``strategy`` uses: the scenario's, with that strategy's ``strategy_overrides``.

        The scenario's own strategy already has its overrides applied (``load_scenario``);
        another strategy gets its own on top of the scenario's values, as ``flexpl compare`` does.
        """
        if strategy is None or strategy == self.scn.strategy:
            return self.scn.training
        hit = self._training.get(strategy)
        if hit is None:
            data = self.scn.resolved()
            data["strategy"] = strategy
            apply_strategy_overrides(data)
            hit = self._training[strategy] = TrainingCfg.model_validate(data["training"])
        return hit

    def context(self, cand: Candidate) -> PlanContext:
        """Build and place the candidate's plan exactly as ``simulator.setup`` does."""
        try:
            cfg = PlanCfg.model_validate(cand.plan).model_dump(exclude_none=True) if cand.plan else None
        except Exception as exc:  # pydantic's error, as one line
            raise UserError(f"plan: {exc}".splitlines()[0]) from None
        plan = build_plan(cand.strategy, cfg, self.topo, self.n_blocks, self.default_cut,
                          front=self.front)

        check_cuts(self.scn.model, self.costs.model(self.plain), [st.start for st in plan.stages])
        key = repr(plan)
        hit = self._contexts.get(key)
        if hit is not None:
            return hit
        scn, tr = self.scn, self.training_for(cand.strategy)
        opt = tr.optimizer
        data_nodes = list(scn.data_nodes)
        in_shape = self.data.input_shape
        samples = dict(self.samples)
        variant = self.plain
        if plan.junction == "features":
            _, in_shape = patch_input(in_shape, len(data_nodes))
            variant = (in_shape, plan.stages[1].start, len(data_nodes))
            samples = dict.fromkeys(data_nodes, len(self.data.train_y))
        train_nodes = [self.topo.server] if plan.collect_data else data_nodes
        train_samples = {self.topo.server: sum(samples.values())} if plan.collect_data else samples
        layout = place(plan, self.topo, train_nodes)
        steps = equal_steps(train_samples.values(), tr.batch_size) if tr.batching == "equal_steps" else None
        weights = [self.costs.weights(variant, st.start, st.end) for st in plan.stages]
        has_params = [w[0] > 0 for w in weights]
        n_stages = len(plan.stages)
        input_grad = [any(has_params[:s]) for s in range(n_stages)]
        junction = next((s for s in range(1, n_stages) if len(layout.replicas[s]) < len(layout.replicas[s - 1])),
                        None)
        fed_round = [s for s, x in enumerate(plan.stages) if x.sync.kind == "fedavg" and x.sync.unit == "round"]
        fed_step = [s for s, x in enumerate(plan.stages) if x.sync.kind == "fedavg" and x.sync.unit == "step"]
        ctx = PlanContext(
            plan=plan, layout=layout, topo=self.topo, variant=variant, costs=self.costs, in_shape=in_shape,
            x_esize=self.x_esize, y_esize=self.y_esize, act_esize=4, data_nodes=data_nodes,
            train_nodes=train_nodes, samples=samples,
            batches={n: batch_sizes(k, tr.local_epochs, tr.batch_size, tr.max_steps_per_round, steps)
                     for n, k in train_samples.items()},
            fed_round=fed_round, fed_step=fed_step, fed_step_every=[plan.stages[s].sync.every for s in fed_step],
            stages=plan.stages, input_grad=input_grad,
            out_grad=[has_params[s] or input_grad[s] for s in range(n_stages)],
            state_bytes=[w[2] for w in weights], features=plan.junction == "features", junction_stage=junction,
            opt_flops=[optimizer_flops(self.costs.weights(variant, st.start, st.end, trainable_count=True)[0],
                                       opt.name, opt.momentum, opt.weight_decay)
                       + (prox_flops(st, self.costs.stage(variant, st.start, st.end))
                          if self.aggregator.proximal else 0)
                       for st in plan.stages],
            agg_flops=self.aggregator.flops,
            opt_states=2 if opt.name == "adam" else (1 if opt.momentum > 0 else 0),
            float_elements=[self.costs.float_elements(variant, st.start, st.end) for st in plan.stages],
            independent_paths=plan.junction != "features" and all(
                st.replication == "per_node" and st.host == "own" and not st.hosts for st in plan.stages))
        # gradients travel in the dtype of the activations they belong to (float32 in the zoo)
        ctx.act_esize = self.costs.probe(variant, plan.stages[0].start, plan.stages[0].end,
                                         (1, *in_shape), False).out_esize
        self._contexts[key] = ctx
        return ctx

    def round_kinds(self, ctx: PlanContext) -> Counter:
        """How many rounds of each kind the scenario runs (:meth:`round_sequence`), in order of first appearance."""
        return Counter(self.round_sequence(ctx))

    def round_sequence(self, ctx: PlanContext) -> list[tuple]:
        """The kind of each round 1..R: (clients, download first, upload last, relay holder, collect), by the
        simulator's client selection and the sync rules of ``flexpl.plan.program``."""
        scn, tr, plan = self.scn, self.scn.training, ctx.plan
        relay = relays(plan)
        seq: list[tuple] = []
        synced, holder = True, None
        for rnd in range(1, tr.rounds + 1):
            selected = tuple(ctx.train_nodes if plan.collect_data
                             else select_clients(ctx.train_nodes, tr.clients_per_round, scn.seed, rnd))
            upload = uploads_after(plan, rnd, tr.rounds)
            seq.append((selected, synced, upload, holder if relay else None, plan.collect_data and rnd == 1))
            synced = upload
            holder = relay_holder_after(plan, selected) or holder
        return seq

    def round_cost(self, ctx: PlanContext, kind: tuple) -> WalkedRound:
        """Walk one kind of round and cost it, with and without its end-of-round upload.

        Walked once per (plan, clients, download, relay holder, collect): plans that differ
        only in their FedAvg period share walks, since the period only decides which rounds sync.
        """
        selected, download, _upload, holder, collect = kind
        if not ctx.walk_key:
            ctx.walk_key = repr((_round_synced(ctx.plan), ctx.opt_flops))
        key = (ctx.walk_key, selected, download, holder, collect)
        hit = self._walks.get(key)
        if hit is None:
            walk = ShapeWalk(ctx)
            walk.relay_holder = holder
            ct = walk.walk(selected, download, collect)
            repeat = ct.repeat()
            prefix = Totals.empty(self.topo)
            prefix.add_actions(_merged(ct.trace, 0, ct.split, repeat), self.topo)
            full = _copy_totals(prefix)
            full.add_actions(_merged(ct.trace, ct.split, len(ct.trace), repeat), self.topo)
            # raw samples leave a data node as collected data, as a first stage's input, or as the
            # "activation" of an empty front stage (cut 0), i.e. into a stage that starts at block 0
            t, data = ct.trace, set(ctx.data_nodes)
            raw_into = {f"s{s}r{r}" for s, st in enumerate(ctx.stages) if st.start == 0
                        for r in range(len(ctx.layout.replicas[s]))}
            raw = sum(t.amount[i] * repeat[i] for i in range(len(t))
                      if t.kind[i] != COMPUTE and t.src[i] in data
                      and (t.what[i] in ("data", "input") or (t.what[i] == "activation" and t.label[i] in raw_into)))
            hit = self._walks[key] = WalkedRound({False: RoundCost(prefix, math.nan, True, raw),
                                                  True: RoundCost(full, math.nan, True, raw)}, ct.activations, ct)
        return hit

    def predict(self, cand: Candidate) -> Prediction:
        """Predicted costs of one candidate for every round of the scenario (see the CSV columns)."""
        # The walk and the clock allocate many small tuples and lists but make no reference
        # cycles; left on, the cyclic GC rescans the growing traces again and again (3x slower).
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._predict(cand)
        finally:
            if enabled:
                gc.enable()

    def _predict(self, cand: Candidate) -> Prediction:
        t0 = time.perf_counter()
        scn, topo = self.scn, self.topo
        ctx = self.context(cand)
        sequence = self.round_sequence(ctx)
        kinds = Counter(sequence)
        total = Totals.empty(topo)
        sim_time = 0.0
        raw_bytes = 0
        fast = True
        activations: dict[tuple[int, int], int] = {}
        walks = [(self.round_cost(ctx, kind), kind[2] and bool(ctx.fed_round), count) for kind, count in kinds.items()]
        of_kind = {kind: walked.cost[upload] for kind, (walked, upload, _) in zip(kinds, walks)}
        needs: dict[int, tuple[WalkedRound, set[bool]]] = {}
        for walked, upload, _ in walks:
            needs.setdefault(id(walked), (walked, set()))[1].add(upload)
        fast_ok = True  # rounds of one plan differ little: once the block clock gives up, skip it
        for walked, uploads in needs.values():
            walked.clock(uploads, fast_ok)
            fast_ok = fast_ok and walked.cost[True].exact_fast
        for walked, upload, count in walks:
            rc = walked.cost[upload]
            _add_scaled(total, rc.totals, count)
            sim_time += rc.makespan * count
            raw_bytes += rc.raw_bytes * count
            fast = fast and rc.exact_fast
            for k, v in walked.activations.items():
                activations[k] = max(activations.get(k, 0), v)
        rounds = scn.training.rounds
        # the simulator's definition (costs.bill.bill); evaluation is not predicted
        b = bill(total, topo, sim_time, scn.energy.include_idle, False)
        idle = b["idle_j"]
        node_energy = {n: b["per_node"][n]["energy_j"] for n in total.node}
        energy = b["energy_j"]
        device_energy = sum(node_energy[n] for n in scn.data_nodes)
        device_bytes = max(total.node[n]["bytes_sent"] + total.node[n]["bytes_received"] for n in scn.data_nodes)
        peak, params = self.memory(ctx, activations)
        fits = all(peak[n] <= topo.nodes[n].memory_bytes for n in topo.nodes)
        params_total = sum(self.costs.weights(ctx.variant, ctx.stages[s].start, ctx.stages[s].end)[0]
                           for s, reps in enumerate(ctx.layout.replicas) for _ in reps)
        row: dict[str, Any] = {
            "plan": cand.label, "strategy": ctx.plan.name, "family": cand.family, "cut": cand.cut,
            "grouping": cand.grouping, "sync_every": cand.sync_every or "", "stages": len(ctx.stages),
            "flops_per_round": _per(total.flops, rounds), "bytes_per_round": _per(total.bytes, rounds),
            "sim_time_s_per_round": sim_time / rounds, "energy_j_per_round": energy / rounds,
            "device_energy_j_per_round": device_energy / rounds,
            "energy_j_compute_per_round": total.energy_compute / rounds,
            "energy_j_comm_per_round": total.energy_comm / rounds,
            "max_device_bytes_per_round": _per(device_bytes, rounds),
            "raw_bytes_per_round": _per(raw_bytes, rounds), "raw_data_moved": raw_bytes > 0,
            "peak_memory_bytes_max": max(peak.values()),
            "peak_memory_device_max": max(peak[n] for n in scn.data_nodes),
            "device_memory_fits": fits, "params_total": params_total,
            "max_params_total": max(params.values()), "rounds": rounds,
            "flops_total": int(total.flops), "bytes_total": int(total.bytes), "sim_time_s": sim_time,
            "energy_j_total": energy, "device_energy_j_total": device_energy,
            CUMULATIVE: self.cumulative([of_kind[k] for k in sequence]),
            "predict_ms": 1000 * (time.perf_counter() - t0),
        }
        per_node = {n: {**d, "energy_j": node_energy[n], "energy_j_idle": idle[n]} for n, d in total.node.items()}
        return Prediction(row, peak, per_node, total.link, fast, raw_bytes)

    def cumulative(self, rounds: list[RoundCost]) -> CumulativeBill:
        """The exact bill after each round, from each round's own cost (``rounds``: round 1 first).

        On the terms of the row's totals (:func:`flexpl.costs.bill.bill`): idle energy, when the scenario
        includes it, is each node's idle power times the clock's span so far less its busy and radio time.
        """
        import numpy as np

        topo, data = self.topo, self.scn.data_nodes
        flops = tuple(accumulate(int(rc.totals.flops) for rc in rounds))
        nbytes = tuple(accumulate(int(rc.totals.bytes) for rc in rounds))
        span = list(accumulate(rc.makespan for rc in rounds))
        energy = list(accumulate(rc.totals.energy for rc in rounds))
        device = list(accumulate(sum(rc.totals.node[n]["energy_j"] for n in data) for rc in rounds))
        if self.scn.energy.include_idle and rounds:
            names = list(topo.nodes)
            busy = np.cumsum([[rc.totals.node[n]["busy_s"] + rc.totals.node[n].get("comm_s", 0.0) for n in names]
                              for rc in rounds], axis=0)
            power = np.array([topo.nodes[n].idle_power_w for n in names])
            idle_j = np.maximum(np.asarray(span)[:, None] - busy, 0.0) * power[None, :]
            on_data = [i for i, n in enumerate(names) if n in set(data)]
            energy = [e + float(i) for e, i in zip(energy, idle_j.sum(axis=1))]
            device = [e + float(i) for e, i in zip(device, idle_j[:, on_data].sum(axis=1))]
        return CumulativeBill(flops, nbytes, tuple(span), tuple(energy), tuple(device))

    def memory(self, ctx: PlanContext, activations: dict[tuple[int, int], int]
               ) -> tuple[dict[str, int], dict[str, int]]:
        """Peak bytes per node and parameters per node.

        A node holds, for every replica it hosts: the stage's weights (state dict), a
        gradient per trainable parameter, the optimizer state (SGD momentum: one buffer;
        Adam: two), and the activations autograd saves for its largest batch; the
        aggregator also keeps the averaged copy of every FedAvg stage. A joint step runs every
        forward before any backward, so the activations of all replicas on a node coexist.
        """
        states = ctx.opt_states
        peak = dict.fromkeys(self.topo.nodes, 0)
        params = dict.fromkeys(self.topo.nodes, 0)
        for s, reps in enumerate(ctx.layout.replicas):
            st = ctx.stages[s]
            n_params, trainable, state = self.costs.weights(ctx.variant, st.start, st.end)
            for r in reps:
                peak[r.host] += state + trainable * (1 + states) + activations.get((s, r.index), 0)
                params[r.host] += n_params
            agg = ctx.layout.aggregators[s]
            if agg is not None:
                peak[agg] += state
            for a in dict.fromkeys(ctx.layout.agg_of[s].values()) if ctx.layout.grouped(s) else ():
                peak[a] += state  # each group head keeps its group's average
        return peak, params
