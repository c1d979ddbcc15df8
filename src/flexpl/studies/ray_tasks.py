"""Run FlexPL work as Ray tasks: ``flexpl sweep --ray [ADDRESS]`` and ``flexpl plan --validate K --ray``.

A study of a hundred cells of minutes each outgrows one machine. With ``--ray`` every unit
of work (a sweep cell, a plan to validate) becomes one Ray task that asks for the CPUs its
scenario uses (``engine.workers``, default 1) and runs the same function as the local path:
a sweep cell still writes its own folder through ``run_one``, so resuming, the digest check
and ``sweep.csv`` (rebuilt from the cells' summaries as each task finishes) stay exactly as
they are without Ray.

``--ray`` alone starts a local Ray on this machine (``--jobs N`` CPUs, default every core);
``--ray ADDRESS`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``) joins a running cluster,
whose nodes must have flexpl installed and see the ``--out`` folder (a shared file system).
Ray is an optional extra: ``pip install 'flexpl[ray]'``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from flexpl.errors import UserError

# connecting to Ray lives in flexpl.io.ray_cluster (the ray executor uses it too); its names are
# also this module's, for the studies. _owned: whether the Ray session() yields now was started by it
from flexpl.io.ray_cluster import LOCAL, check_address, largest_node_cpus, require, session
from flexpl.io.ray_cluster import owned_stack as _owned

__all__ = ["LOCAL", "Task", "TaskError", "check_address", "largest_node_cpus", "require", "run_tasks", "session"]


@dataclass(frozen=True)
class Task:
    """One unit of work: ``fn(*args)`` in a Ray worker with ``cpus`` CPUs; ``key`` names it to the caller."""

    key: Hashable
    fn: Callable[..., Any]
    args: tuple
    cpus: int = 1


class TaskError(UserError):
    """A task's ``UserError``, raised in the driver; ``key`` is the task's."""

    def __init__(self, key: Hashable, message: str) -> None:
        super().__init__(message)
        self.key = key


def _in_worker(fn: Callable[..., Any], cpus: int, *args: Any) -> tuple[str, Any]:
    """What a Ray task runs: ``fn(*args)`` with ``cpus`` torch threads and at most ``cpus`` run workers.

    A ``UserError`` comes back as ``("user_error", message)`` so that the driver prints the
    same one line as without Ray (a raised one would arrive wrapped in Ray's traceback).
    """
    import torch

    from flexpl.io.lean import spare_dynamo
    from flexpl.sim.exec.policy import WORKERS_ENV

    spare_dynamo()  # this worker runs FlexPL's work only: no torch._dynamo (flexpl.io.lean)

    torch.set_num_threads(cpus)  # a worker process serves many tasks: set both every time
    os.environ[WORKERS_ENV] = str(cpus)
    try:
        return "ok", fn(*args)
    except UserError as exc:
        return "user_error", str(exc)


def run_tasks(ray: Any, tasks: Sequence[Task], on_done: Callable[[Hashable, Any], None]) -> None:
    """Submit every task at once; call ``on_done(key, result)`` in the driver as each one finishes.

    A task's ``UserError`` is raised here as a :class:`TaskError` (after which the remaining tasks
    are cancelled, as they are on Ctrl-C); a task asking for more CPUs than any node has is a
    :class:`TaskError` before anything runs, since Ray would wait for such a node forever.
    """
    if not tasks:
        return
    most = largest_node_cpus(ray)
    for t in tasks:
        if t.cpus > most:
            raise TaskError(t.key, f"asks for {t.cpus} CPUs (engine.workers) but the largest Ray node has "
                                   f"{most:g}; lower engine.workers, or give the local Ray more with --jobs")
    remote = ray.remote(_in_worker)
    # on a Ray of our own a task is never retried: its worker is killed only when we stop [Note: no cancel ...]
    retries = {"max_retries": 0} if _owned and _owned[-1] else {}
    pending = {remote.options(num_cpus=t.cpus, **retries).remote(t.fn, t.cpus, *t.args): t for t in tasks}
    try:
        while pending:
            # (a timeout: Python runs a Ctrl-C's handler only between waits, not inside one)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
            for ref in ready:
                t = pending.pop(ref)
                status, value = ray.get(ref)
                if status == "user_error":
                    raise TaskError(t.key, value)
                on_done(t.key, value)
    finally:
        if pending:  # an error or Ctrl-C: drop what has not finished (cell folders stay resumable)
            _drop(ray, list(pending))


def _drop(ray: Any, refs: list[Any]) -> None:
    """Stop the tasks ``refs`` after an error or Ctrl-C.

    [Note: no cancel of a Ray we shut down] ``ray.cancel`` of a task whose reply is arriving at
    that moment (Ctrl-C just as a cell finishes) aborts the driver inside Ray (``Check failed:
    ... Tried to complete task that was not pending``, ray 2.60, one interrupt in ten in
    tests/test_ray.py; ray-project/ray#54798 fixed a sibling of it). So on a local Ray that
    :func:`session` started, nothing is cancelled: the worker processes running our tasks (its
    raylet's children titled ``ray::_in_worker``) are killed at once, and the Ray is shut down
    next. (Shutting down alone let cells run on for the 2 s it takes; the tasks were submitted
    without retries, so none restarts.) On a Ray that outlives us (a cluster, or one the caller
    started) the tasks must be cancelled: those already finished are skipped, which narrows that
    window, and the rest are cancelled (``force``: a cell's Python loop may be deep in torch).
    """
    if _owned and _owned[-1]:
        _kill_local_tasks()
        return
    _done, rest = ray.wait(refs, num_returns=len(refs), timeout=0)
    for ref in rest:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)


def _kill_local_tasks() -> None:
    """SIGKILL this process's descendants that run a task of :func:`run_tasks` (title ``ray::_in_worker``).

    Linux only (read from /proc); elsewhere nothing is killed and the Ray's shutdown ends them.
    """
    import signal

    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return
    children: dict[int, list[int]] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:  # "pid (comm) state ppid ...": comm may hold spaces
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    todo = [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), ()):
            todo.append(pid)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().startswith(f"ray::{_in_worker.__name__}".encode()):
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
