"""The distributed run's ranks and their state: which rank each node is, the status file each worker keeps.

A worker writes its state to ``<status_dir>/rank<r>.json`` (:class:`_Status`); the
launcher (:mod:`flexpl.dist.launch`) reads it to show progress and to name the node
that stopped a run (:class:`WorkerFailure`). Part of :mod:`flexpl.dist`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexpl.errors import UserError, WorkerFailure

if TYPE_CHECKING:  # heavy imports stay inside the functions: the CLI imports this module for its parser
    from flexpl.config.scenario import Scenario
    from flexpl.dist.transport import Comm


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


def _log(msg: str) -> None:
    print(f"[flexpl worker {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _where(st: dict[str, Any]) -> str:
    if st.get("state") == "finishing":
        return "after the last round"
    rnd = st.get("round") or 0
    return f"in round {rnd}" if rnd else "during setup"
