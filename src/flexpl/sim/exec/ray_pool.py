"""``engine.executor: ray``: one run's FedAvg clients (or FPL's edge groups) trained by Ray actors, on one
machine or a cluster.

[Note: Ray workers] For plans whose clients are independent within a round and start it
from the averaged weights (FedAvg ``fl``, SplitFed ``sfl``: every stage per data node,
averaged over all clients every round, optimizers reset on download; see
:func:`supported`), a round's arithmetic splits by client. Each Ray actor
(:class:`RayWorker`) is set up once per run from the scenario (same seed: the same data
partition and initial model; the data is loaded in the actor) and holds one working model
per stage ([Note: working models]), updated in place client after client: load the
round's global weights, reset the optimizer, train the client's batches, add its weights
times its FedAvg coefficient to the actor's partial sum. An actor's memory is therefore
one model per stage plus its data, whatever the number of clients a round.

Each round the parent (:class:`RayPool`) puts the global weights once (``ray.put``), deals
the round's clients to the actors by expected work (:func:`deal`: samples x FLOPs per
sample, longest first, to the least-loaded actor), and walks the round on shapes
(``Engine.shadow``) while the actors train, so it records the very trace the sequential
engine records: FLOPs, bytes, clock and energy are identical. Each actor returns ONE
partial FedAvg sum per stage and its clients' per-step losses; the parent adds the
partial sums (in actor order) and installs the total where the upload reads it
(``FedAvgSum.install``); the losses are summed in the sequential engine's order. The sum
is grouped by actor instead of client by client, so weights agree with ``sequential`` to
float round-off (bitwise with one actor) [Note: mode equivalence].

[Note: Ray groups] FPL plans with per-edge trunks (``fpl`` behind several edge servers,
``fpl-sync``, ``fpl-group``, and their per-device cuts ``-devcut``/``-ecut``; see :func:`grouped`) do
not split by client: a trunk trains on the stacked activations of its edge's devices every step. They split by *group* instead:
the data nodes that share a replica in some stage (:func:`groups`: one edge with its
devices), which exchange no tensors with other groups within a round. The groups are dealt
to the actors once per run (:func:`deal` by samples x FLOPs per sample) and stay there, so
state that outlives a round stays where it trains: the fronts that are never averaged (and
their optimizer state) live in the actor owning their group for the whole run. Each round
the parent downloads (on its own replicas, recording the trace as ``sequential``), sends
each actor its groups' averaged replicas (weights and optimizer state, as downloaded), and
walks the round on shapes while each actor runs the sequential engine's steps for its
groups' nodes (``train_round`` on those nodes: a group's arithmetic is the sequential
one). The actors send back the trained averaged replicas; the parent loads them and
averages them in the round-end upload exactly as ``sequential`` does, so the weights agree
to float round-off (bitwise where torch is deterministic); only the training loss is summed
per actor. The parent fetches the never-averaged fronts (weights and optimizer state) from
the actors only when it needs them: before a checkpoint, at the end of the run, and before a
custom evaluation (``run(evaluate=...)``). A resumed run pushes the checkpoint's fronts to
the actors when they start.

[Note: Ray evaluation] The groups' paths (each device's front and its group's trunk) are
evaluated by the actors that train them, side by side: the parent puts the averaged weights
as it holds them after the round's upload (``ray.put`` once), each actor loads them and
evaluates its own nodes' paths on its own copy of the test set (or validation split), and
returns per node its path's accuracy and loss, the names of its distinct paths and the sum
of its nodes' logits. The parent merges them as ``Engine.evaluate`` computes the figures:
the weighted mean and the worst path per node in the same order, the ensemble from the
summed logits, the paths counted by name (``Evaluation.path_key``). A path's logits are the
same arithmetic as in the parent (one torch thread in an actor), so accuracies agree to
float round-off; no front travels for an evaluation.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flexpl.errors import UserError, WorkerFailure
from flexpl.sim.evaluate import merged_figures
from flexpl.sim.exec.processes import _sum_losses

if TYPE_CHECKING:
    from flexpl.config.scenario import Scenario
    from flexpl.plan.spec import Layout, Plan
    from flexpl.sim.engine import Engine
    from flexpl.sim.node_data import NodeData

# how long the actors may take to start and set the scenario up (data, model) before the run gives up
SETUP_TIMEOUT_S = 600.0
# the executors that run any plan the simulator runs (named in the error for an unsupported one)
OTHER_EXECUTORS = "sequential, processes or vectorized (or auto)"


def deal(work: Mapping[str, float], n: int) -> list[list[str]]:
    """The clients ``work`` (name -> expected work) dealt to ``n`` workers: longest first, each to the
    least-loaded worker (the lowest index on a tie); each worker's clients keep ``work``'s order.

    Longest first to the least loaded keeps the largest load within 4/3 of the best possible
    (Graham's LPT bound), so no worker waits long for one straggling client.
    """
    if n < 1:
        raise ValueError(f"deal: at least one worker, got {n}")
    order = {name: i for i, name in enumerate(work)}
    load = [0.0] * n
    owner: dict[str, int] = {}
    for name in sorted(work, key=lambda k: (-work[k], order[k])):
        w = min(range(n), key=lambda i: (load[i], i))
        owner[name] = w
        load[w] += work[name]
    return [[name for name in work if owner[name] == w] for w in range(n)]


def supported(eng: Engine) -> bool:
    """True when every stage with weights trains on working models (see [Note: Ray workers])."""
    from flexpl.models import count_params

    return bool(eng.working) and all(
        s in eng.working or not any(count_params(r.module) for r in eng.replicas[s][:1])
        for s in range(len(eng.plan.stages)))


def groups(layout: Layout) -> list[list[str]]:
    """The data nodes in groups that share no replica (in data-node order): nodes served by one replica of
    some stage (one edge's devices, for a per-edge trunk) are in one group [Note: Ray groups]."""
    nodes = list(layout.serves[0]) if layout.serves else []
    root = {n: n for n in nodes}

    def find(n: str) -> str:
        while root[n] != n:
            root[n] = root[root[n]]
            n = root[n]
        return n

    for reps in layout.replicas:
        for r in reps:
            a = find(r.members[0])
            for m in r.members[1:]:
                b = find(m)
                if b != a:
                    root[b] = a
    out: dict[str, list[str]] = {}
    for n in nodes:
        out.setdefault(find(n), []).append(n)
    return list(out.values())


def grouped(scn: Scenario, eng: Engine) -> bool:
    """True for the FPL plans with per-edge trunks that ray runs by group [Note: Ray groups]: lockstep
    steps with a batch junction, every stage per device (on the device itself) or per group, FedAvg at
    the end of a round or no sync; at least two groups; no failures, no FedProx, no batch norm."""
    plan = eng.plan
    if plan.junction != "batch" or plan.schedule != "lockstep" or plan.collect_data or eng.working:
        return False
    from flexpl.models.aggregate import make_aggregator

    if scn.failures.active or make_aggregator(scn.training.aggregator).proximal:
        return False
    # a piece of a device's front hosted at its trunk's host (per-device cuts, ``Stage.hosts``) is still that
    # device's own replica: it moves the piece's compute in the trace, not its weights across groups
    if not all((st.replication == "per_node" and st.host == "own") or st.replication == "per_group"
               for st in plan.stages):
        return False
    if not any(st.replication == "per_group" for st in plan.stages):
        return False
    if any(st.sync.kind not in ("none", "fedavg") or (st.sync.kind == "fedavg" and st.sync.unit != "round")
           for st in plan.stages):
        return False
    if any(any(True for _ in reps[0].module.buffers()) for reps in eng.replicas if reps):
        return False
    return len(groups(eng.layout)) >= 2


def unsupported(scn: Scenario, plan: Plan) -> UserError:
    """The one-line error for ``engine.executor: ray`` on a plan it does not run."""
    return UserError(f"engine.executor=ray: the {plan.name} plan (strategy {scn.strategy}) is not supported yet; "
                     "ray runs plans whose clients train independently every round from the averaged weights "
                     "(FedAvg fl, SplitFed sfl; FedAvg aggregator, optimizers reset on sync) and FPL with "
                     "per-edge trunks (fpl, fpl-sync, fpl-group and their -devcut/-ecut per-device cuts behind 2 "
                     "or more edge servers: every stage per device or per edge, averaged per round or never), "
                     f"with no failures, no FedProx, no batch norm; use engine.executor={OTHER_EXECUTORS}")


def replica_state(eng: Engine, s: int, r: int) -> dict[str, Any]:
    """A copy of replica ``r`` of stage ``s`` on the CPU (the parent may have no GPU): its weights and its
    optimizer's state."""
    from flexpl.sim.checkpoint import snapshot

    rep = eng.replicas[s][r]
    return snapshot({"module": rep.module.state_dict(), "opt": rep.opt.state_dict() if rep.opt is not None else None},
                    cpu=True)


def load_replica(eng: Engine, s: int, r: int, state: Mapping[str, Any]) -> None:
    """Load what :func:`replica_state` copied into replica ``r`` of stage ``s`` (its arena row too)."""
    rep = eng.replicas[s][r]
    rep.module.load_state_dict(state["module"])
    if rep.opt is not None and state["opt"] is not None:
        rep.opt.load_state_dict(state["opt"])
        arena = eng.arenas.get(s)
        if arena is not None:  # the loaded state back into the stacked rows (as after a checkpoint)
            arena.absorb(r, rep.module, rep.opt)


class RayWorker:
    """A Ray actor: the scenario set up once, one working model per stage, trains dealt clients in place."""

    def __init__(self, scn: Scenario, setup: Callable[..., Any], threads: int = 1) -> None:
        """Set the scenario up as the parent did (same seed: same partition and initial model); ``setup`` is
        the simulator's (:func:`flexpl.sim.simulator.setup`, passed in: the simulator imports this module)."""
        from flexpl.io.lean import spare_dynamo

        spare_dynamo()  # an actor runs FlexPL's work only: no torch._dynamo (flexpl.io.lean)
        torch.set_num_threads(threads)
        st = setup(scn, ray_worker=True)
        self.eng = st.engine
        self.by_name = {nd.name: nd for nd in st.nodes}
        # the test set and the validation split, as the parent has them (same scenario, same seed)
        self.eval_sets = {"test": (st.data.test_x, st.data.test_y), **({"val": st.val} if st.val is not None else {})}

    def ready(self) -> int:
        """This actor's process id (the parent waits for every actor's set-up with it)."""
        return os.getpid()

    def peak_rss_bytes(self) -> int:
        """This actor process's peak resident memory so far (Linux: ``VmHWM``; elsewhere ru_maxrss)."""
        return peak_rss_bytes()

    def train(self, glob: dict[int, dict[str, torch.Tensor]], lr: float,
              clients: list[tuple[str, list[np.ndarray], dict[int, float]]],
              ) -> tuple[dict[int, dict[str, torch.Tensor]], dict[str, list[tuple[float, int]]]]:
        """Train ``clients`` (name, batch index arrays, FedAvg coefficient per stage) one after another,
        each from ``glob`` with a fresh optimizer; returns the partial FedAvg sum per stage (coefficient
        times weights, summed in the given order) and each client's (loss sum, samples) per step."""
        eng = self.eng
        with torch.no_grad():
            for s, state in glob.items():
                eng.global_[s].load_state_dict(state)
        eng.lr_now.fill_(lr)
        acc: dict[int, dict[str, torch.Tensor]] = {}
        losses: dict[str, list[tuple[float, int]]] = {}
        for name, idx_list, coef in clients:
            for w in eng.working.values():
                w.bound = None  # the next step binds this client: the global weights, a fresh optimizer
            nd = self.by_name[name]
            losses[name] = [eng.train_step({name: nd.batch(torch.tensor(idx), eng.device)}) for idx in idx_list]
            eng.recorder.take()  # the parent records the trace
            with torch.no_grad():
                for s, w in eng.working.items():
                    state = w.module.state_dict()
                    if s not in acc:
                        acc[s] = {k: v.detach() * coef[s] for k, v in state.items()}
                    else:
                        for k, a in acc[s].items():
                            a.add_(state[k].detach() * coef[s])
        for w in eng.working.values():
            w.bound = None
        return {s: {k: v.cpu() for k, v in a.items()} for s, a in acc.items()}, losses


    # ---------------------------------------------------------------- groups [Note: Ray groups]

    def load(self, states: Mapping[tuple[int, int], Mapping[str, Any]]) -> None:
        """Load replicas' weights and optimizer state, (stage, replica) -> :func:`replica_state`."""
        for (s, r), state in states.items():
            load_replica(self.eng, s, r, state)

    def states(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], dict[str, Any]]:
        """The weights and optimizer state of the replicas ``keys`` (stage, replica)."""
        return {(s, r): replica_state(self.eng, s, r) for s, r in keys}

    def train_groups(self, lr: float, rnd: int, nodes: dict[str, list[np.ndarray]],
                     synced: Mapping[tuple[int, int], Mapping[str, Any]], train_round: Callable[..., Any],
                     ) -> tuple[dict[tuple[int, int], dict[str, Any]], float, int]:
        """One round of this actor's groups: load the averaged replicas ``synced`` as the parent downloaded
        them, run the sequential engine's steps for ``nodes`` (name -> batch index arrays, in the round's
        order; ``train_round`` is the simulator's), and return those replicas trained, the loss sum and
        the samples."""
        eng = self.eng
        self.load(synced)
        eng.lr_now.fill_(lr)
        # copied: Ray hands an actor read-only arrays (zero-copy from its object store), which
        # torch.from_numpy warns about in every actor
        batches = {n: [torch.tensor(i) for i in idx] for n, idx in nodes.items()}
        eng.expect_round({n: sum(len(b) for b in bs) for n, bs in batches.items()})
        loss_sum, n_sum, _ = train_round(eng, self.by_name, batches, [], rnd)
        eng.recorder.take()  # the parent records the trace
        return self.states(list(synced)), float(loss_sum), int(n_sum)

    def evaluate_part(self, which: str, shared: Mapping[tuple[Any, ...], Mapping[str, torch.Tensor]],
                      node_weights: dict[str, float]) -> dict[str, Any]:
        """Evaluate the paths of ``node_weights``' nodes (this actor's) on the ``which`` set ("test" or "val"),
        after loading the averaged weights ``shared`` (``RayPool.evaluate``); ``Evaluation._evaluate_part``."""
        eng = self.eng
        with torch.no_grad():
            for key, state in shared.items():
                (eng.global_[key[1]] if key[0] == "global" else eng.group_global[(key[1], key[2])]).load_state_dict(state)
        x, y = self.eval_sets[which]
        return eng.evaluate(x, y, node_weights, part=True)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far, in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def worker_count(scn: Scenario, ray: Any, units: int | None = None) -> int:
    """Actors for this run: ``engine.workers``, else as many as the cluster's CPUs (or GPUs over
    ``engine.gpus_per_worker``) hold; at most one per data node (``units``: per group). Asking for more actors than the
    cluster holds is a ``UserError`` (Ray would wait forever for the rest)."""
    eng = scn.engine
    res = ray.cluster_resources()
    gpus = eng.gpus_per_worker
    cap = int(res.get("GPU", 0.0) / gpus + 1e-9) if gpus else int(res.get("CPU", 0.0))
    what = f"{res.get('GPU', 0.0):g} GPUs for {gpus:g} each" if gpus else f"{res.get('CPU', 0.0):g} CPUs for 1 each"
    n = min(eng.workers or cap, units or len(scn.data_nodes))
    if cap < 1 or n > cap:
        raise UserError(f"engine.executor=ray: {max(n, 1)} Ray actors do not fit the cluster ({what}); "
                        "lower engine.workers or engine.gpus_per_worker, or add nodes")
    return n


class RayPool:
    """The Ray actors of one run and the parent's side of a round (see [Note: Ray workers])."""

    def __init__(self, scn: Scenario, eng: Engine, by_name: Mapping[str, NodeData], flops_per_sample: float,
                 setup: Callable[..., Any]) -> None:
        """Join ``engine.ray_address`` (or start a local Ray) and set up the actors, one per worker, each with
        ``setup`` (the simulator's)."""
        from flexpl.io.ray_cluster import session

        self.stack = contextlib.ExitStack()
        self.actors: list[Any] = []
        self.groups: list[list[str]] | None = None
        self.owned: list[list[str]] = []  # [Note: Ray groups] each actor's data nodes, for the whole run
        self.owner: dict[str, int] = {}
        self.stale = False  # actors hold never-averaged replicas newer than this process's
        address = scn.engine.ray_address
        local_cpus = None if address else (scn.engine.workers or min(os.cpu_count() or 1, len(scn.data_nodes)))
        try:
            self.ray = ray = self.stack.enter_context(session(address, local_cpus))
            if _in_ray_task():
                raise UserError("engine.executor=ray: this run is itself a Ray task (flexpl sweep/compare --ray), "
                                "whose CPUs its actors would wait for; use one of the two: drop --ray there, "
                                "or set engine.executor to sequential, processes or vectorized")
            # [Note: Ray groups] plans that do not split by client split by group (an edge with its devices)
            self.groups = None if supported(eng) else groups(eng.layout)
            self.n = worker_count(scn, ray, len(self.groups) if self.groups is not None else None)
            gpus = scn.engine.gpus_per_worker
            worker_scn = copy.deepcopy(scn)
            worker_scn.engine.device = "cuda" if gpus else "cpu"
            actor = ray.remote(RayWorker).options(num_cpus=1, num_gpus=gpus, max_restarts=0)
            self.actors = [actor.remote(worker_scn, setup, 1) for _ in range(self.n)]
            # set-up errors surface here, before round 1
            self.pids = ray.get([a.ready.remote() for a in self.actors], timeout=SETUP_TIMEOUT_S)
            if self.groups is not None:
                self._deal_groups(eng, by_name, flops_per_sample)
        except UserError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            if type(exc).__module__.startswith("ray."):  # an actor that did not start or failed its set-up
                first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
                raise UserError(f"engine.executor=ray: the Ray actors did not set up ({type(exc).__name__}: "
                                f"{first.strip()[:300]}); every node needs flexpl and the scenario's code "
                                "installed; run with --set engine.executor=sequential to see set-up errors here"
                                ) from None
            raise
        except BaseException:
            self.close()
            raise
        self.flops_per_sample = flops_per_sample
        self.meta = {n: nd.meta() for n, nd in by_name.items()}

    # ---------------------------------------------------------------- groups [Note: Ray groups]

    def _keys(self, eng: Engine, nodes: Sequence[str], synced: bool) -> list[tuple[int, int]]:
        """(stage, replica) of the replicas serving ``nodes`` in the stages averaged (``synced``) or never."""
        serves = eng.layout.serves
        return [(s, r) for s, st in enumerate(eng.plan.stages) if (st.sync.kind == "fedavg") == synced
                for r in sorted({serves[s][n] for n in nodes})]

    def _deal_groups(self, eng: Engine, by_name: Mapping[str, NodeData], flops_per_sample: float) -> None:
        """Deal the groups to the actors for the whole run, by samples x FLOPs per sample, and give each
        actor its groups' never-averaged replicas as this process holds them (a resumed run's: restored)."""
        assert self.groups is not None
        work = {g[0]: sum(len(by_name[n]) for n in g) * max(flops_per_sample, 1.0) for g in self.groups}
        members = {g[0]: g for g in self.groups}
        self.owned = [[n for first in share for n in members[first]] for share in deal(work, self.n)]
        self.owner = {n: w for w, nodes in enumerate(self.owned) for n in nodes}
        self.ray.get([a.load.remote({k: replica_state(eng, *k) for k in self._keys(eng, nodes, False)})
                      for a, nodes in zip(self.actors, self.owned)], timeout=SETUP_TIMEOUT_S)
        self.stale = False

    def _get(self, ref: Any, w: int, what: str) -> Any:
        """``ray.get(ref)`` of actor ``w``'s call; an actor that died (its process killed, its node lost) is a
        one-line :class:`~flexpl.errors.WorkerFailure` naming it and ``what`` it was doing (exit 3)."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            why = " ".join(str(exc).split())[:160]
            raise WorkerFailure(f"engine.executor=ray: Ray actor {w + 1} of {self.n} (pid {self.pids[w]}) died "
                                f"{what} ({type(exc).__name__}: {why}); the run stops: run it again (flexpl run "
                                "--resume OUT continues from its last checkpoint, if training.checkpoint_every "
                                "saved one)") from None

    def pull(self, eng: Engine) -> None:
        """Fetch the never-averaged replicas (e.g. FPL fronts) from the actors that train them, once after
        each round that trained: this process evaluates and checkpoints its own replicas. No-op for fl/sfl."""
        if self.groups is None or not self.stale:
            return
        got = [self._get(a.states.remote(self._keys(eng, nodes, False)), w, "sending its fronts")
               for w, (a, nodes) in enumerate(zip(self.actors, self.owned))]
        for part in got:
            for (s, r), state in part.items():
                load_replica(eng, s, r, state)
        self.stale = False

    def evaluate(self, eng: Engine, which: str, node_weights: dict[str, float], y: torch.Tensor) -> dict[str, Any]:
        """[Note: Ray evaluation] The groups' paths evaluated side by side, each by the actor that trains them:
        every actor gets the averaged weights as this process holds them after the round's upload (one
        ``ray.put``) and evaluates its nodes' paths on its own copy of the ``which`` set ("test", "val"); the
        never-averaged fronts are not fetched. The figures are merged as ``Engine.evaluate`` computes them
        (per node in ``node_weights``' order; the ensemble from the actors' logit sums, ``y`` the labels)."""
        if self.groups is None:
            raise RuntimeError("RayPool.evaluate: only plans run by group evaluate in the actors")
        shared = self.ray.put({**{("global", s): m.state_dict() for s, m in eng.global_.items()},
                               **{("group", s, agg): m.state_dict() for (s, agg), m in eng.group_global.items()}})
        jobs = []
        for w, actor in enumerate(self.actors):
            mine = {n: v for n, v in node_weights.items() if self.owner.get(n) == w}
            if mine:
                jobs.append((w, actor.evaluate_part.remote(which, shared, mine)))
        per: dict[str, tuple[float, float]] = {}
        keys: set[tuple[Any, ...]] = set()
        ens: torch.Tensor | None = None
        for w, ref in jobs:
            part = self._get(ref, w, "evaluating its paths")
            per.update(part["nodes"])
            keys.update(tuple(k) for k in part["paths"])
            ens = part["logits_sum"] if ens is None else ens + part["logits_sum"]
        missing = [n for n in node_weights if n not in per]
        if missing or ens is None:
            raise RuntimeError(f"RayPool.evaluate: no actor evaluated {missing[:3]}")
        return merged_figures(per, node_weights, ens / len(node_weights), y.cpu(), len(keys))

    def _train_groups(self, eng: Engine, plan_batches: dict[str, list[torch.Tensor]],
                      walk: Callable[..., tuple[float, int, dict[str, int]]], rnd: int,
                      ) -> tuple[float, int, dict[str, int]]:
        """One round by group: each actor trains its groups' nodes from the averaged replicas as downloaded
        here, while this process walks the round on shapes; the trained averaged replicas come back."""
        lr = float(eng.lr_now[0])
        jobs = []
        for w, actor in enumerate(self.actors):
            nodes = [n for n in plan_batches if self.owner[n] == w]  # the round's order
            if not nodes:
                continue
            synced = {k: replica_state(eng, *k) for k in self._keys(eng, nodes, True)}
            jobs.append((w, actor.train_groups.remote(lr, rnd, {n: [b.numpy() for b in plan_batches[n]] for n in nodes},
                                                  synced, walk)))
        with eng.shadow(set(plan_batches)):
            _, _, seen = walk(eng, self.meta, plan_batches, [], rnd)
        loss_sum, n_sum = 0.0, 0
        for w, ref in jobs:
            states, ls, ns = self._get(ref, w, f"in round {rnd}")
            for (s, r), state in states.items():
                load_replica(eng, s, r, state)
            loss_sum, n_sum = loss_sum + ls, n_sum + ns
        self.stale = True
        return loss_sum, n_sum, seen

    def train_round(self, eng: Engine, plan_batches: dict[str, list[torch.Tensor]],
                    walk: Callable[..., tuple[float, int, dict[str, int]]], fed_step: Sequence[int],
                    rnd: int) -> tuple[float, int, dict[str, int]]:
        """One round: the actors train the clients dealt to them while this process walks the round on
        shapes; the partial sums are added and installed for the upload. Returns loss sum, samples, seen."""
        if fed_step:
            raise RuntimeError("engine.executor=ray: step-level FedAvg is not supported")
        if self.groups is not None:
            return self._train_groups(eng, plan_batches, walk, rnd)
        ray = self.ray
        samples = {n: sum(len(b) for b in bs) for n, bs in plan_batches.items()}
        trained = eng.claim_order(samples)  # FedAvg order, clients with samples
        coef = {s: {n: w.sum.coef[w.pos[eng.layout.serves[s][n]]] for n in trained}
                for s, w in eng.working.items()}
        shares = deal({n: samples[n] * max(self.flops_per_sample, 1.0) for n in trained}, self.n)
        glob = ray.put({s: eng.global_[s].state_dict() for s in eng.working})
        lr = float(eng.lr_now[0])
        refs = [(w, self.actors[w].train.remote(
            glob, lr, [(n, [b.numpy() for b in plan_batches[n]], {s: coef[s][n] for s in coef}) for n in share]))
            for w, share in enumerate(shares) if share]
        log: list[tuple[list[str], int]] = []
        with eng.shadow(set(plan_batches)):
            _, _, seen = walk(eng, self.meta, plan_batches, list(fed_step), rnd, log)
        losses: dict[str, list[tuple[float, int]]] = {}
        total: dict[int, dict[str, torch.Tensor]] = {}
        for w, ref in refs:
            part, got = self._get(ref, w, f"in round {rnd}")
            losses.update(got)
            for s, acc in part.items():
                if s not in total:
                    total[s] = acc
                else:
                    for k, a in total[s].items():
                        a.add_(acc[k])
        for s, w in eng.working.items():
            if s in total:
                w.sum.install(total[s])
        return (*_sum_losses(log, losses), seen)

    def peak_rss_bytes(self) -> list[int]:
        """Each actor's peak resident memory so far, in bytes."""
        return self.ray.get([a.peak_rss_bytes.remote() for a in self.actors])

    def close(self) -> None:
        """Stop the actors, and the Ray this run started (if it started one)."""
        ray = getattr(self, "ray", None)
        for a in getattr(self, "actors", []):
            with contextlib.suppress(Exception):
                ray.kill(a)
        self.actors = []
        self.stack.close()


def _in_ray_task() -> bool:
    """True inside a Ray task or actor (not a driver)."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return False
    return getattr(ray_worker.global_worker, "mode", None) == getattr(ray_worker, "WORKER_MODE", 1)
