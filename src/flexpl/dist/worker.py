"""One worker of a distributed run (``flexpl worker``, :mod:`flexpl.cli.worker`): set up, meet the peers, run the rounds, gather to rank 0.

Rank 0 writes the run's results (rounds.csv after every round, summary.json at the end).
Part of :mod:`flexpl.dist`, whose docstring describes the whole backend.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from flexpl.costs.trace import timeline_rows
from flexpl.dist.messages import _barrier, _eval_engine, _point_to_root, _while_rank0_works
from flexpl.dist.ranks import WorkerFailure, _log, _Status, _where, node_ranks
from flexpl.errors import UserError
from flexpl.io import injected_faults as faults

if TYPE_CHECKING:  # heavy imports stay inside the functions
    from flexpl.config.scenario import Scenario
    from flexpl.dist.transport import Comm

# How long ranks wait for each other to start (loading data and building the engine can
# take a while when many workers share a few cores); per-message waits use engine.timeout_s.
STARTUP_TIMEOUT_S = 300.0
# Hidden test hook, "RANK:ROUND:MODE" (see flexpl.io.injected_faults): tests/test_dist.py uses it to
# check fault handling.
FAULT_ENV = faults.DIST_ENV
EXIT_PEER_FAILURE = 3


# ---------------------------------------------------------------- the worker


def run_worker(scn: Scenario, rank: int, world: int, out: Path, timeout_s: float,
               status_dir: str | None = None, resume: bool = False) -> dict[str, Any] | None:
    """Run this rank's part of ``scn``; rank 0 writes the results into ``out`` and returns the summary.

    ``resume``: continue from the checkpoint every rank committed in ``out`` (see [Note: dist checkpoints]).
    """
    import torch

    from flexpl.dist.transport import Comm, MalformedMessage, PeerFailure

    # one thread per worker: the simulator's arithmetic depends on the thread count, and
    # the workers share the machine's cores anyway
    torch.set_num_threads(1)
    ranks = node_ranks(scn)
    if world != len(ranks):
        raise UserError(f"worker: WORLD_SIZE is {world} but the scenario has {len(ranks)} nodes; "
                        "start one process per node")
    if not 0 <= rank < world:
        raise UserError(f"worker: RANK {rank} is out of range 0..{world - 1}")
    node_of = {r: n for n, r in ranks.items()}
    me = node_of[rank]
    if os.environ.get("FLEXPL_EMULATE"):  # --emulate-links: training hops over shaped TCP (emulate_comm.py)
        from flexpl.dist.emulate.comm import EmuComm

        comm: Comm = EmuComm(rank, timeout_s)
    else:
        comm = Comm(rank, timeout_s)
    status = _Status(status_dir, rank, me, comm)
    try:
        return _work(scn, rank, world, me, ranks, comm, status, out, resume)
    except PeerFailure as exc:
        what = f"timeout {timeout_s:g}s" if exc.reason == "timeout" else f"connection {exc.reason}"
        line = f"node '{node_of[exc.peer]}' (rank {exc.peer}) stopped responding {_where(status.info)} ({what})"
        status.set(state="failed", kind="peer", peer=exc.peer, message=line)
        _log(f"rank {rank} ({me}): {exc.op} with rank {exc.peer} failed: {exc.detail}")
        raise WorkerFailure(line) from None
    except MalformedMessage as exc:  # refused bytes that are not a FlexPL message: one line, no traceback
        status.set(state="failed", kind="error", peer=None, message=str(exc))
        raise WorkerFailure(f"node '{me}' (rank {rank}) failed {_where(status.info)}: {exc}") from None
    except BaseException as exc:
        if not isinstance(exc, SystemExit | KeyboardInterrupt):
            status.set(state="failed", kind="error", peer=None, message=str(exc) or type(exc).__name__)
        raise


def _gather_summary(scn: Scenario, world: int, comm: Comm, st: Any, result: Any, writer: Any,
                    status: _Status) -> dict[str, Any] | None:
    """Every rank's byte counters to rank 0, checked against the trace; rank 0 writes the run (else None)."""
    import torch

    # every rank's byte counters to rank 0 (after measuring, and not measured themselves)
    links = list(st.topo.links)
    counts = torch.tensor([comm.sent.get(k, 0) for k in links] + [comm.received.get(k, 0) for k in links]
                          + [result.summary["per_link"][k]["bytes"] for k in links], dtype=torch.int64)
    got = _point_to_root(comm, world, counts)
    summary = None
    if got is not None:
        n = len(links)
        sent = torch.stack([g[:n] for g in got]).sum(0)
        received = torch.stack([g[n:2 * n] for g in got]).sum(0)
        for r, g in enumerate(got):  # [Note: meta replicas]: every rank recorded the same trace
            if not torch.equal(g[2 * n:], got[0][2 * n:]):
                raise RuntimeError(f"internal error: rank {r} accounted other bytes than rank 0")
        if not torch.equal(sent, received):
            raise RuntimeError("internal error: bytes sent and bytes received differ on some link")
        summary = result.summary
        for k, b in zip(links, sent.tolist()):
            summary["per_link"][k]["measured_bytes"] = int(b)
        summary["measured_bytes_total"] = int(sent.sum())
        walls = [r["wall_s"] for r in result.rounds]
        summary["wall_s_per_round"] = sum(walls) / max(len(walls), 1)
        summary["backend"] = "dist"
        summary["world_size"] = world
        if result.traces:
            writer.timeline(timeline_rows(*result.traces[-1], round_index=len(result.rounds)))
        writer.finish(summary, result.rounds)  # summary.json last: marks a finished run
        if hasattr(comm, "dump") and status.path is not None:  # --emulate-links: the clock's hops per round
            from flexpl.dist.emulate.comm import predicted_links

            (status.path.parent / "emu_predicted.json").write_text(json.dumps(predicted_links(result.traces, st.topo)))
    return summary


def _set_up_and_meet(scn: Scenario, rank: int, world: int, me: str, ranks: dict[str, int], comm: Comm,
                     out: Path, resume: bool = False) -> tuple[Any, Any]:
    """Set up this rank's simulator state, start the results folder (rank 0), meet the others; returns
    the state and the run's writer (only rank 0 writes). ``resume``: the folder keeps its checkpoint
    and rounds.csv."""
    from datetime import timedelta

    import torch.distributed as dist

    from flexpl.dist.transport import DistTransport
    from flexpl.io.results import RunWriter
    from flexpl.sim.simulator import setup

    t0 = time.perf_counter()
    st = setup(scn, transport_factory=lambda rec: DistTransport(rec, me, ranks, comm),
               is_local=lambda node: node == me)
    writer = RunWriter(out, scn.digest(), scn.resolved())
    if rank == 0:
        writer.begin(resume=resume)  # see [Note: stale results] in flexpl.io.results
    startup = max(comm.timeout.total_seconds(), STARTUP_TIMEOUT_S)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=startup))
    if hasattr(comm, "connect"):  # EmuComm: one data connection per neighbour; first-step costs paid now
        from flexpl.dist.emulate.comm import warm_up

        comm.connect(st.topo, ranks)
        warm_up()
    _barrier(comm, world)  # everyone is set up: the wall clock starts together
    _log(f"rank {rank} ({me}): set up and connected to {world - 1} peers in {time.perf_counter() - t0:.1f}s")
    return st, writer


def _kept_rows(out: Path, upto: int) -> dict[int, dict[str, float]]:
    """Rounds 1..``upto`` of the stopped run's rounds.csv: what rank 0 alone knew of them (``train_loss`` summed
    over every rank, ``wall_s``), by round."""
    import csv

    kept: dict[int, dict[str, float]] = {}
    try:
        with (out / "rounds.csv").open(newline="") as fh:
            for r in csv.DictReader(fh):
                if r.get("round", "").isdigit() and int(r["round"]) <= upto:
                    kept[int(r["round"])] = {"train_loss": float(r["train_loss"]), "wall_s": float(r["wall_s"])}
    except (OSError, KeyError, TypeError, ValueError):
        pass  # reported below, in one line
    missing = [k for k in range(1, upto + 1) if k not in kept]
    if missing:
        raise UserError(f"--resume: '{out / 'rounds.csv'}' lacks round {missing[0]} of the checkpoint (round {upto}); "
                        "it was changed after the run stopped: rerun from the start without --resume")
    return kept


def _work(scn: Scenario, rank: int, world: int, me: str, ranks: dict[str, int], comm: Comm,
          status: _Status, out: Path, resume: bool = False) -> dict[str, Any] | None:
    """The worker's run: set up, meet the others, the simulator's round loop, then the final gather."""
    import torch
    import torch.distributed as dist

    from flexpl.dist.checkpoint import RankStore, agree_round, committed_round
    from flexpl.sim.simulator import run

    kept: dict[int, dict[str, float]] = {}
    if rank == 0 and resume:  # before the writer starts rewriting rounds.csv with the restored rows
        kept = _kept_rows(out, committed_round(out, scn.digest()))
    st, writer = _set_up_and_meet(scn, rank, world, me, ranks, comm, out, resume)
    resumed = agree_round(comm, world, out, scn.digest()) if resume else 0
    eng = st.engine
    fault = faults.dist_fault(rank, comm.timeout.total_seconds())
    inner = eng.train_step
    local = [0.0, 0]  # this round's training loss and samples (only hosts of the last stage have any)
    clock: dict[str, Any] = {"start": time.perf_counter(), "end": None}

    def train_step(batch):
        fault(status.info["round"], "train")
        ls, ns = inner(batch)
        local[0] += ls
        local[1] += ns
        return ls, ns
    eng.train_step = train_step  # an instance attribute: run() calls it like the method

    def round_end() -> None:
        """Every rank reports its loss to rank 0; rank 0 stops the round's clock once all have."""
        if clock["end"] is not None:
            return
        got = _point_to_root(comm, world, torch.tensor([local[0], float(local[1])], dtype=torch.float64))
        clock["end"] = time.perf_counter()
        if got is not None:
            clock["loss"] = sum(float(g[0]) for g in got) / max(sum(float(g[1]) for g in got), 1.0)

    def evaluate(_st) -> dict[str, float]:
        round_end()
        view = _eval_engine(eng, comm, ranks)
        weights = ({st.topo.server: float(sum(len(nd) for nd in st.nodes))} if st.plan.collect_data
                   else {nd.name: float(len(nd)) for nd in st.nodes})  # as simulator.run weighs them

        def work() -> dict[str, float]:
            fault(status.info["round"], "eval")
            return view.evaluate(st.data.test_x, st.data.test_y, weights)
        return _while_rank0_works(comm, world, work) or {}

    def on_round(row: dict[str, Any]) -> None:
        if row["round"] <= resumed:  # restored from the checkpoint: nothing ran, nothing to gather
            if rank == 0:
                row.update(kept[row["round"]])  # as the stopped run wrote them
                writer.round(row)
        else:
            round_end()
            if rank == 0:
                row["train_loss"] = clock["loss"]  # every rank's share, not only rank 0's
                row["wall_s"] = clock["end"] - clock["start"]
                writer.round(row)  # rounds completed so far survive a crash
            fault(row["round"], "commit")
            if store.saved == row["round"]:  # its row is in rounds.csv: the round can be resumed from
                store.commit(world, scn.digest())
        local[0], local[1] = 0.0, 0
        comm.round = row["round"] + 1  # EmuComm tags what it measures with the round
        status.set(round=row["round"] + 1, rounds_done=row["round"],
                   progress=f"acc {row['accuracy']:.4f}  bytes {row['bytes']:.3e}")
        clock["start"], clock["end"] = time.perf_counter(), None

    # the round's wall clock stops before its checkpoint is written (round_end gathers the losses once)
    store = RankStore(out, rank, comm, resumed if resume else None, before_save=round_end)
    status.set(state="running", round=resumed + 1)
    result = run(scn, on_round=on_round, st=st, keep_traces=rank == 0, evaluate=evaluate, checkpoint_dir=store,
                 resume=resume)
    status.set(state="finishing")
    _log(f"rank {rank} ({me}): {len(result.rounds)} round(s) in {result.summary['wall_s']:.1f}s")

    summary = _gather_summary(scn, world, comm, st, result, writer, status)
    if hasattr(comm, "dump") and status.path is not None:  # --emulate-links: what this rank measured
        comm.dump(status.path.parent / f"emu_measured_rank{rank}.json")
    _barrier(comm, world)  # nobody leaves while rank 0 may still be receiving
    status.set(state="done")
    dist.destroy_process_group()
    _log(f"rank {rank} ({me}): finished")
    return summary


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.isdigit():
        raise UserError(f"worker: environment variable {name} is not set; start workers with torchrun "
                        "(see the README) or use flexpl run --backend dist")
    return int(raw)


def start_rank(scenario: str | None, sets: Sequence[str] = (), strategy: str | None = None, seed: int | None = None,
               out: str | None = None, timeout: float | None = None, status_dir: str | None = None,
               resume: bool = False) -> NoReturn:
    """One rank of a distributed run (``flexpl worker``); its rank and the world size come from the
    environment (``RANK``, ``WORLD_SIZE``: torchrun's, or the launcher's). ``resume``: continue
    from the checkpoint committed in ``out`` (see [Note: dist checkpoints]).

    A user error before the run starts (environment, scenario, ``timeout``) is raised. After
    that every way out ends in ``os._exit``: 0, 2 (user error) or 3 (a peer failed); tearing
    down torch and a gloo process group takes seconds (and can wait on a dead peer), and
    everything worth keeping is written by then.
    """
    from flexpl.config.scenario import load_scenario

    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    scn = load_scenario(scenario, list(sets), strategy, seed)
    timeout = timeout if timeout is not None else scn.engine.timeout_s
    if timeout <= 0:
        raise UserError(f"--timeout: must be a positive number of seconds, got {timeout:g}")
    folder = Path(out or f"results/{scn.name}-{scn.strategy}")
    code = 0
    try:
        run_worker(scn, rank, world, folder, timeout, status_dir, resume)
    except UserError as exc:  # WorkerFailure included
        print(f"flexpl: error: {exc}", file=sys.stderr)
        code = EXIT_PEER_FAILURE if isinstance(exc, WorkerFailure) else 2
    except Exception:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launched_rank(spec: dict[str, Any]) -> int:
    """What the launcher runs in each worker process: :func:`start_rank` with ``spec``'s arguments;
    a user error before the run starts is one line on stderr and exit code 2."""
    try:
        start_rank(**spec)
    except UserError as exc:
        print(f"flexpl: error: {exc}", file=sys.stderr)
        return 2
