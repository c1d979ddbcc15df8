"""Distributed backend: one process per scenario node, the simulator's stage code, gloo point-to-point.

``flexpl run SCENARIO --backend dist`` starts one worker process per node on this machine
(``launch``); ``flexpl worker`` is one such process, and is what ``torchrun`` starts when
a run spans several machines. Every worker builds the same ``Setup`` as the simulator
with ``is_local`` true only for its own node, and runs the simulator's own round loop
(``simulator.run``): replicas of other nodes live on the meta device, so every rank walks
the same global program in the same order and records the same trace (accounted bytes,
FLOPs, virtual time and energy are identical on every rank and equal to the
simulator's), while real arithmetic happens only on the rank that hosts a replica. The
only difference is the transport: ``DistTransport`` really sends each crossing hop by hop
along the topology's route (see ``dist_transport.py`` [Note: no deadlock]).

Beside the work, and outside the measured bytes (separate tag, not counted):

- each round ends with every rank reporting its training loss to rank 0, which timestamps
  the round (``wall_s`` in rounds.csv);
- evaluation rounds gather the weights a test sample meets (``Engine.eval_module`` of every
  stage/replica on the data nodes' paths) to rank 0, which evaluates on the test set with
  the simulator's ``Engine.evaluate``;
- at the end rank 0 gathers every rank's byte counters and writes summary.json with
  ``measured_bytes_total`` and ``per_link[...]["measured_bytes"]`` beside the accounted ones.

Faults: every send/receive waits at most ``engine.timeout_s`` (so it must exceed the
longest local computation between two messages, e.g. a local epoch; rank 0's evaluation
is covered by keepalives); a worker that loses a peer writes a one-line report and exits 3. The launcher watches its workers, names the
node that died or hangs (following who waits for whom), kills the rest and raises
``WorkerFailure``. Rank 0 writes rounds.csv after every round, so finished rounds survive.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from flexpl import faults
from flexpl.errors import UserError

if TYPE_CHECKING:  # heavy imports stay inside the functions: the CLI imports this module for its parser
    import torch
    from torch import nn

    from flexpl.config import Scenario
    from flexpl.engine.core import Engine
    from flexpl.engine.dist_transport import Comm

# How long ranks wait for each other to start (loading data and building the engine can
# take a while when many workers share a few cores); per-message waits use engine.timeout_s.
STARTUP_TIMEOUT_S = 300.0
# Hidden test hook, "RANK:ROUND:MODE" (see flexpl.faults): tests/test_dist.py uses it to
# check fault handling.
FAULT_ENV = faults.DIST_ENV
EXIT_PEER_FAILURE = 3


class WorkerFailure(UserError):
    """A worker of a distributed run died, hung or failed; the message names the node and round."""


# ---------------------------------------------------------------- ranks


def node_ranks(scn: Scenario) -> dict[str, int]:
    """Rank of every node: its ``rank:`` field, by default its position in the node list."""
    world = len(scn.nodes)
    ranks: dict[str, int] = {}
    taken: dict[int, str] = {}
    for i, n in enumerate(scn.nodes):
        r = n.rank if n.rank is not None else i
        if r >= world:
            raise UserError(f"nodes[{i}].rank: rank {r} is out of range; {world} nodes take ranks 0..{world - 1}")
        if r in taken:
            raise UserError(f"nodes[{i}].rank: rank {r} is taken by node '{taken[r]}'; give every node its "
                            "own rank (default: its position in the node list)")
        taken[r] = n.name
        ranks[n.name] = r
    return ranks


# ---------------------------------------------------------------- worker status


class _Status:
    """This worker's state in ``<status_dir>/rank<r>.json``, refreshed by a daemon thread.

    The launcher reads it to show progress and, when something fails, to find the rank
    everyone waits for: ``blocked`` is the (op, peer, since) this rank is waiting on now
    (gloo's wait releases the GIL, so the thread keeps writing while the main thread waits).
    """

    def __init__(self, folder: str | None, rank: int, node: str, comm: Comm) -> None:
        self.path = Path(folder) / f"rank{rank}.json" if folder else None
        self.comm = comm
        self.info: dict[str, Any] = {"rank": rank, "node": node, "pid": os.getpid(), "state": "setup",
                                     "round": 0, "rounds_done": 0, "progress": ""}
        self.lock = threading.Lock()  # the main thread updates info while the beat copies it
        self.write_failed = False  # a failed write is reported once (see write)
        if self.path is not None:
            self.write()
            threading.Thread(target=self._beat, daemon=True).start()

    def _beat(self) -> None:
        while self.info["state"] not in ("failed", "done"):
            time.sleep(0.2)
            self.write()

    def write(self) -> None:
        """Write the current state atomically (a reader never sees half a file)."""
        if self.path is None:
            return
        with self.lock:
            data = dict(self.info, blocked=self.comm.blocked, time=time.time())
        tmp = self.path.with_name(f".{self.path.name}.{threading.get_ident()}")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError as exc:
            # Training goes on, but the launcher now sees stale progress and may blame the wrong
            # node if something fails: say so once in this worker's log (rank<r>.log).
            if not self.write_failed:
                self.write_failed = True
                _log(f"rank {data['rank']} ({data['node']}): warning: cannot write status file "
                     f"{self.path}: {exc.strerror or exc}; the launcher's progress and failure reports "
                     "for this rank may be stale")

    def set(self, **kw: Any) -> None:
        """Update fields and write them now."""
        with self.lock:
            self.info.update(kw)
        self.write()


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
    from flexpl.engine.dist_transport import TAG_AUX

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


# ---------------------------------------------------------------- the worker


def _log(msg: str) -> None:
    print(f"[flexpl worker {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _point_to_root(comm: Comm, world: int, payload: torch.Tensor) -> list[torch.Tensor] | None:
    """Every rank sends ``payload`` (same shape everywhere) to rank 0; rank 0 returns all of them by rank."""
    from flexpl.engine.dist_transport import TAG_AUX

    if comm.rank != 0:
        comm.send(payload, 0, tag=TAG_AUX)
        return None
    return [payload] + [comm.recv(payload.shape, payload.dtype, r, tag=TAG_AUX) for r in range(1, world)]


def _barrier(comm: Comm, world: int) -> None:
    """All ranks meet: everyone reports to rank 0, which then releases everyone (p2p, with timeouts)."""
    import torch

    from flexpl.engine.dist_transport import TAG_AUX

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

    from flexpl.engine.dist_transport import TAG_HOLD

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


def run_worker(scn: Scenario, rank: int, world: int, out: Path, timeout_s: float,
               status_dir: str | None = None) -> dict[str, Any] | None:
    """Run this rank's part of ``scn``; rank 0 writes the results into ``out`` and returns the summary."""
    import torch

    from flexpl.engine.dist_transport import Comm, PeerFailure

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
        from flexpl.engine.emulate_comm import EmuComm

        comm: Comm = EmuComm(rank, timeout_s)
    else:
        comm = Comm(rank, timeout_s)
    status = _Status(status_dir, rank, me, comm)
    try:
        return _work(scn, rank, world, me, ranks, comm, status, out)
    except PeerFailure as exc:
        what = f"timeout {timeout_s:g}s" if exc.reason == "timeout" else f"connection {exc.reason}"
        line = f"node '{node_of[exc.peer]}' (rank {exc.peer}) stopped responding {_where(status.info)} ({what})"
        status.set(state="failed", kind="peer", peer=exc.peer, message=line)
        _log(f"rank {rank} ({me}): {exc.op} with rank {exc.peer} failed: {exc.detail}")
        raise WorkerFailure(line) from None
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
            writer.timeline(*result.traces[-1], round_index=len(result.rounds))
        writer.finish(summary, result.rounds)  # summary.json last: marks a finished run
        if hasattr(comm, "dump") and status.path is not None:  # --emulate-links: the clock's hops per round
            from flexpl.engine.emulate_comm import predicted_links

            (status.path.parent / "emu_predicted.json").write_text(json.dumps(predicted_links(result.traces, st.topo)))
    return summary


def _set_up_and_meet(scn: Scenario, rank: int, world: int, me: str, ranks: dict[str, int], comm: Comm,
                     out: Path) -> tuple[Any, Any]:
    """Set up this rank's simulator state, start the results folder (rank 0), meet the others; returns
    the state and the run's writer (only rank 0 writes)."""
    from datetime import timedelta

    import torch.distributed as dist

    from flexpl.engine.dist_transport import DistTransport
    from flexpl.engine.simulator import setup
    from flexpl.results import RunWriter

    t0 = time.perf_counter()
    st = setup(scn, transport_factory=lambda rec: DistTransport(rec, me, ranks, comm),
               is_local=lambda node: node == me)
    writer = RunWriter(out, scn.digest(), scn.resolved())
    if rank == 0:
        writer.begin()  # see [Note: stale results] in flexpl.results
    startup = max(comm.timeout.total_seconds(), STARTUP_TIMEOUT_S)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=startup))
    if hasattr(comm, "connect"):  # EmuComm: one data connection per neighbour; first-step costs paid now
        from flexpl.engine.emulate_comm import warm_up

        comm.connect(st.topo, ranks)
        warm_up()
    _barrier(comm, world)  # everyone is set up: the wall clock starts together
    _log(f"rank {rank} ({me}): set up and connected to {world - 1} peers in {time.perf_counter() - t0:.1f}s")
    return st, writer


def _work(scn: Scenario, rank: int, world: int, me: str, ranks: dict[str, int], comm: Comm,
          status: _Status, out: Path) -> dict[str, Any] | None:
    """The worker's run: set up, meet the others, the simulator's round loop, then the final gather."""
    import torch
    import torch.distributed as dist

    from flexpl.engine.simulator import run

    st, writer = _set_up_and_meet(scn, rank, world, me, ranks, comm, out)
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
        round_end()
        if rank == 0:
            row["train_loss"] = clock["loss"]  # every rank's share, not only rank 0's
            row["wall_s"] = clock["end"] - clock["start"]
            writer.round(row)  # rounds completed so far survive a crash
        local[0], local[1] = 0.0, 0
        comm.round = row["round"] + 1  # EmuComm tags what it measures with the round
        status.set(round=row["round"] + 1, rounds_done=row["round"],
                   progress=f"acc {row['accuracy']:.4f}  bytes {row['bytes']:.3e}")
        clock["start"], clock["end"] = time.perf_counter(), None

    status.set(state="running", round=1)
    result = run(scn, on_round=on_round, st=st, keep_traces=rank == 0, evaluate=evaluate)
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``flexpl worker`` (rank and world size come from torchrun's environment)."""
    p.add_argument("scenario", nargs="?", default=None, help="built-in scenario name or YAML file (default: edge-fmnist)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set training.rounds=3 (repeatable)")
    p.add_argument("--strategy", default=None, help="preset: centralized, fl, sl, sfl, mp, fpl, fpl-features")
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument("--out", default=None, help="output folder (written by rank 0)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for a peer before giving up (default: engine.timeout_s)")
    p.add_argument("--status-dir", default=None, help=argparse.SUPPRESS)  # set by the launcher


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.isdigit():
        raise UserError(f"worker: environment variable {name} is not set; start workers with torchrun "
                        "(see the README) or use flexpl run --backend dist")
    return int(raw)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, as the CLI's parser
        raise UserError(f"{self.prog}: {message} (see --help)")


def worker_main(argv: Sequence[str]) -> int:
    """``flexpl worker ARGV`` without the CLI: what the launcher runs in each worker process.

    Parses ``argv`` as the ``worker`` command does and calls :func:`main`; a user error
    (bad argument, bad scenario) prints one line and returns 2. Other paths end in
    ``os._exit`` inside :func:`main`.
    """
    p = _Parser(prog="flexpl worker", description="one rank of a distributed run")
    add_arguments(p)
    try:
        return main(p.parse_args(list(argv)))
    except UserError as exc:
        print(f"flexpl: error: {exc}", file=sys.stderr)
        return 2


def main(args: argparse.Namespace) -> int:
    """flexpl worker: one rank of a distributed run; exit 0, 2 (user error) or 3 (a peer failed).

    Every way out ends in ``os._exit``: tearing down torch and a gloo process group takes
    seconds (and can wait on a dead peer), and everything worth keeping is written by then.
    """
    from flexpl.config import load_scenario

    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    scn = load_scenario(args.scenario, args.set, args.strategy, args.seed)
    timeout = args.timeout if args.timeout is not None else scn.engine.timeout_s
    if timeout <= 0:
        raise UserError(f"--timeout: must be a positive number of seconds, got {timeout:g}")
    out = Path(args.out or f"results/{scn.name}-{scn.strategy}")
    code = 0
    try:
        run_worker(scn, rank, world, out, timeout, args.status_dir)
    except UserError as exc:  # WorkerFailure included
        print(f"flexpl: error: {exc}", file=sys.stderr)
        code = EXIT_PEER_FAILURE if isinstance(exc, WorkerFailure) else 2
    except Exception:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ---------------------------------------------------------------- the launcher

# What the fork server imports once, so that each worker forked from it starts in a
# fraction of a second instead of importing torch (and torch._dynamo, which the first
# optimizer pulls in) again: with many workers on few cores that dominates a short run.
_PRELOAD = ["torch", "torch.distributed", "torch._dynamo", "flexpl.engine.dist", "flexpl.engine.simulator",
            "flexpl.engine.dist_transport", "sklearn.datasets"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_status(folder: Path, rank: int) -> dict[str, Any]:
    try:
        return json.loads((folder / f"rank{rank}.json").read_text())
    except (OSError, ValueError):
        return {}


def _where(st: dict[str, Any]) -> str:
    if st.get("state") == "finishing":
        return "after the last round"
    rnd = st.get("round") or 0
    return f"in round {rnd}" if rnd else "during setup"


def blame(codes: list[int | None], statuses: list[dict[str, Any]], node_of: dict[int, str],
          failed: list[int], timeout_s: float) -> str:
    """One line naming the node whose failure stopped the run, and the round it was in.

    ``failed`` lists the ranks that exited with an error, first seen first. One that did
    not report a lost peer is the culprit (it died, or raised). If only ranks that lost a
    peer have exited, follow who waits for whom: from a reporter to the peer it lost, from
    a live rank to the peer it is blocked on, until a live rank that waits for nobody:
    the one that hangs. (The first rank to time out may be waiting on a rank that is
    itself waiting on the hung one, so the first report alone can name the wrong node.)
    """
    for r in failed:
        st = statuses[r]
        if st.get("state") == "failed" and st.get("kind") == "peer":
            continue
        head = f"node '{node_of[r]}' (rank {r})"
        if st.get("state") == "failed" and st.get("kind") == "error":
            return f"{head} failed {_where(st)}: {st.get('message')}"
        code = codes[r]
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return f"{head} stopped responding {_where(st)} ({how})"
    r = failed[0]
    seen: set[int] = set()
    while r not in seen:
        seen.add(r)
        st = statuses[r]
        if codes[r] is not None:
            nxt = st.get("peer")
        else:
            blocked = st.get("blocked")
            nxt = blocked[1] if blocked else None
        if nxt is None:
            break
        r = int(nxt)
    return f"node '{node_of[r]}' (rank {r}) stopped responding {_where(statuses[r])} (timeout {timeout_s:g}s)"


def _worker_process(argv: list[str], env: dict[str, str], log: str) -> None:
    """Body of one launched worker (forked from the fork server): ``flexpl worker ARGV``, output to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    if env.get("FLEXPL_NETNS"):  # --emulate-links: this node's own network namespace, before any socket
        from flexpl.engine.emulate_comm import enter_netns

        enter_netns(env["FLEXPL_NETNS"])
    code = worker_main(argv)  # exits through os._exit on every path that gets that far
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launch(scn: Scenario, out: Path, timeout_s: float | None = None,
           on_progress: Callable[[int, str], None] | None = None,
           extra_env: dict[str, str] | None = None,
           rank_env: Callable[[int], dict[str, str]] | None = None) -> dict[str, Any]:
    """Run ``scn`` with one worker process per node on this machine (gloo over 127.0.0.1); returns the summary.

    Workers are forked from a fork server that has imported torch once, and rendezvous
    through env:// on 127.0.0.1 and a free port. Their logs and status files go to
    ``out/workers/``. If a worker dies, hangs or fails, the others are killed (by pid) and
    ``WorkerFailure`` names the node and the round. ``rank_env(rank)`` adds variables for
    one rank (``--emulate-links``: its network namespace). As with any ``multiprocessing`` code,
    a script that calls this must do so under ``if __name__ == "__main__":`` (the fork
    server imports the caller's main module).
    """
    import multiprocessing

    from flexpl.results import begin_run, prepare_out_dir, write_yaml

    out = prepare_out_dir(out).resolve()
    timeout = float(timeout_s if timeout_s is not None else scn.engine.timeout_s)
    ranks = node_ranks(scn)
    node_of = {r: n for n, r in ranks.items()}
    world = len(ranks)
    begin_run(out, scn.digest())  # no stale results from an earlier run (see [Note: stale results])
    work = out / "workers"
    work.mkdir(exist_ok=True)
    for f in work.glob("rank*.json"):
        f.unlink()
    scn_file = work / "scenario.yaml"  # every rank loads exactly the same resolved scenario
    write_yaml(scn_file, scn.resolved())
    env = dict(os.environ)
    env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(world),
                "LOCAL_WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"})
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the workers talk over loopback only
    env.update(extra_env or {})
    argv = [str(scn_file), "--out", str(out), "--timeout", repr(timeout), "--status-dir", str(work)]
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    procs = []
    try:
        for r in range(world):
            p = ctx.Process(target=_worker_process, name=f"flexpl-worker-{r}",
                            args=(argv, dict(env, RANK=str(r), LOCAL_RANK=str(r), **(rank_env(r) if rank_env else {})),
                                  str(work / f"rank{r}.log")))
            p.start()
            procs.append(p)
        _supervise(procs, work, node_of, timeout, on_progress)
    finally:
        for p in procs:  # leftover workers: ours, by pid
            if p.exitcode is None:
                p.kill()
        for p in procs:
            p.join()
    for f in work.glob("rank*.json"):
        f.unlink()
    return json.loads((out / "summary.json").read_text())


def _supervise(procs: list, work: Path, node_of: dict[int, str], timeout_s: float,
               on_progress: Callable[[int, str], None] | None) -> None:
    """Wait for the workers; on the first failure, find the culprit and raise ``WorkerFailure``."""
    done_seen = 0
    failed: list[int] = []
    rank0_done_at: float | None = None
    while True:
        codes = [p.exitcode for p in procs]
        if on_progress:
            st0 = _read_status(work, 0)
            if st0.get("rounds_done", 0) > done_seen:
                done_seen = st0["rounds_done"]
                on_progress(done_seen, st0.get("progress", ""))
        failed += [r for r, c in enumerate(codes) if c not in (None, 0) and r not in failed]
        if failed:
            # let the ranks that lose this peer notice and report, then decide who is to blame
            time.sleep(0.5)
            codes = [p.exitcode for p in procs]
            failed += [r for r, c in enumerate(codes) if c not in (None, 0) and r not in failed]
            statuses = [_read_status(work, r) for r in range(len(procs))]
            raise WorkerFailure(blame(codes, statuses, node_of, failed, timeout_s))
        if all(c == 0 for c in codes):
            return
        if codes[0] == 0:  # rank 0 wrote the results; the others only have to leave
            rank0_done_at = rank0_done_at or time.monotonic()
            if time.monotonic() - rank0_done_at > timeout_s:
                return
        time.sleep(0.05)


def run_dist(scn: Scenario, out: Path, timeout_s: float | None, quiet: bool,
             extra_env: dict[str, str] | None = None,
             rank_env: Callable[[int], dict[str, str]] | None = None) -> dict[str, Any]:
    """``flexpl run --backend dist``: launch the workers with a progress bar; returns the summary."""
    from flexpl.console import progress

    with progress(quiet) as bar:
        task = bar.add_task(f"{scn.name} / {scn.strategy} (dist, {len(scn.nodes)} processes)",
                            total=scn.training.rounds, info="")
        return launch(scn, out, timeout_s,
                      on_progress=lambda done, info: bar.update(task, completed=done, info=info),
                      extra_env=extra_env, rank_env=rank_env)
