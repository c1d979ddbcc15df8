"""The launcher of a distributed run: one worker process per node on this machine, watched until they finish.

``flexpl run --backend dist`` calls :func:`run_dist`. Part of :mod:`flexpl.dist`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexpl.dist.ranks import WorkerFailure, _where, node_ranks
from flexpl.dist.worker import launched_rank

if TYPE_CHECKING:  # heavy imports stay inside the functions: the CLI imports this module for its parser
    from flexpl.config.scenario import Scenario


# What the fork server imports once, so that each worker forked from it starts in a
# fraction of a second instead of importing torch (and torch._dynamo, which the first
# optimizer pulls in) again: with many workers on few cores that dominates a short run.
_PRELOAD = ["torch", "torch.distributed", "torch._dynamo", "flexpl.dist.launch", "flexpl.sim.simulator",
            "flexpl.dist.transport"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_status(folder: Path, rank: int) -> dict[str, Any]:
    try:
        return json.loads((folder / f"rank{rank}.json").read_text())
    except (OSError, ValueError):
        return {}


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


def _worker_process(spec: dict[str, Any], env: dict[str, str], log: str) -> None:
    """Body of one launched worker (forked from the fork server): ``flexpl worker`` with ``spec``'s
    arguments (:func:`flexpl.dist.worker.start_rank`), output to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    if env.get("FLEXPL_NETNS"):  # --emulate-links: this node's own network namespace, before any socket
        from flexpl.dist.emulate.comm import enter_netns

        enter_netns(env["FLEXPL_NETNS"])
    code = launched_rank(spec)  # exits through os._exit on every path that gets that far
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launch(scn: Scenario, out: Path, timeout_s: float | None = None,
           on_progress: Callable[[int, str], None] | None = None,
           extra_env: dict[str, str] | None = None,
           rank_env: Callable[[int], dict[str, str]] | None = None, resume: bool = False) -> dict[str, Any]:
    """Run ``scn`` with one worker process per node on this machine (gloo over 127.0.0.1); returns the summary.

    Workers are forked from a fork server that has imported torch once, and rendezvous
    through env:// on 127.0.0.1 and a free port. Their logs and status files go to
    ``out/workers/``. If a worker dies, hangs or fails, the others are killed (by pid) and
    ``WorkerFailure`` names the node and the round. ``rank_env(rank)`` adds variables for
    one rank (``--emulate-links``: its network namespace). As with any ``multiprocessing`` code,
    a script that calls this must do so under ``if __name__ == "__main__":`` (the fork
    server imports the caller's main module). ``resume``: every rank continues from the round
    committed in ``out/checkpoint/`` (see [Note: dist checkpoints] in :mod:`flexpl.dist.checkpoint`).
    """
    import multiprocessing

    from flexpl.io.results import begin_run, prepare_out_dir, write_yaml

    out = prepare_out_dir(out).resolve()
    timeout = float(timeout_s if timeout_s is not None else scn.engine.timeout_s)
    ranks = node_ranks(scn)
    node_of = {r: n for n, r in ranks.items()}
    world = len(ranks)
    if resume:  # a missing, foreign or torn-beyond-repair checkpoint is an input error: the folder stays as it is
        from flexpl.dist.checkpoint import check_resume

        check_resume(out, scn.digest(), world)
    begin_run(out, scn.digest(), resume=resume)  # no stale results from an earlier run (see [Note: stale results])
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
    spec = {"scenario": str(scn_file), "out": str(out), "timeout": timeout, "status_dir": str(work), "resume": resume}
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    procs = []
    try:
        for r in range(world):
            p = ctx.Process(target=_worker_process, name=f"flexpl-worker-{r}",
                            args=(spec, dict(env, RANK=str(r), LOCAL_RANK=str(r), **(rank_env(r) if rank_env else {})),
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
             rank_env: Callable[[int], dict[str, str]] | None = None, resume: bool = False) -> dict[str, Any]:
    """``flexpl run --backend dist``: launch the workers with a progress bar; returns the summary
    (``resume``: continue the run stopped in ``out``)."""
    from flexpl.io.console import progress

    with progress(quiet) as bar:
        task = bar.add_task(f"{scn.name} / {scn.strategy} (dist, {len(scn.nodes)} processes)",
                            total=scn.training.rounds, info="")
        return launch(scn, out, timeout_s,
                      on_progress=lambda done, info: bar.update(task, completed=done, info=info),
                      extra_env=extra_env, rank_env=rank_env, resume=resume)
