"""Connecting to Ray: a local Ray started for the work, or a running cluster at an address.

Shared by the studies that run cells as Ray tasks (:mod:`flexpl.studies.ray_tasks`) and by the
simulator's ``engine.executor: ray`` (:mod:`flexpl.sim.exec.ray_pool`). Every failure to
connect is one line (a missing Ray, a malformed or unreachable address). Ray is an optional
extra: ``pip install 'flexpl[ray]'``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

from flexpl.errors import UserError

LOCAL = ""  # the value of ``--ray`` given without an address: start a local Ray
# whether the Ray that :func:`session` yields now was started by it (and so is shut down by it)
owned_stack: list[bool] = []
ADDRESS = re.compile(r"^(auto|local|ray://\S+|[A-Za-z0-9._-]+:\d+)$")


def check_address(address: str | None) -> None:
    """A ``UserError`` unless ``address`` is None, empty (local) or looks like a Ray address."""
    if address and not ADDRESS.match(address):
        raise UserError(f"--ray: '{address}' is not a Ray address (auto, HOST:PORT or ray://HOST:PORT); "
                        "put --ray after the scenario, or write --ray=ADDRESS")


def require(address: str | None, num_cpus: int | None = None) -> None:
    """Fail at once, with one line, on a bad or unreachable ``--ray`` address or ``--jobs``, or when Ray is not
    installed."""
    if address is None:
        return
    check_address(address)
    if address and num_cpus is not None:
        raise UserError("--jobs: with --ray ADDRESS the cluster's CPUs decide how many tasks run at once; "
                        "drop --jobs (or drop the address to start a local Ray with --jobs CPUs)")
    if num_cpus is not None and num_cpus < 1:
        raise UserError(f"--jobs: must be at least 1, got {num_cpus}")
    import_ray()
    if address and address != "local":
        check_reachable(address)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--ray: Ray is not installed; install flexpl[ray] (pip install 'flexpl[ray]')") from None
    return ray


@contextlib.contextmanager
def session(address: str | None, num_cpus: int | None = None) -> Iterator[Any]:
    """Yield the ``ray`` module connected to ``address`` (or a new local Ray with ``num_cpus``).

    A Ray this process had already started (a notebook, a test) is used as it is and left
    running; one started here is shut down on the way out, also on an error or Ctrl-C.
    """
    require(address or "", num_cpus)
    if address and address != "local":
        check_reachable(address)
    ray = import_ray()
    if ray.is_initialized():
        owned_stack.append(False)
        try:
            yield ray
        finally:
            owned_stack.pop()
        return
    import logging

    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR}
    if address and address != "local":
        kwargs["address"] = address
    else:  # "local": always a new Ray, never one a `ray start` on this machine left (or a stale record of it)
        kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count() or 1)
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:  # no cluster at that address
        raise UserError(f"--ray {address}: cannot connect ({str(exc).splitlines()[0]}); start the cluster "
                        "(ray start --head) or drop the address for a local Ray") from None
    owned_stack.append(True)
    try:
        yield ray
    finally:
        owned_stack.pop()
        ray.shutdown()


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A ``UserError`` if ``HOST:PORT`` (or ``ray://HOST:PORT``) does not accept a connection.

    ``ray.init`` would retry an unreachable head node for minutes, logging as it goes.
    """
    import socket

    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise UserError(f"--ray {address}: cannot reach {host}:{port} ({exc}); start the cluster there "
                        "(ray start --head) or fix the address") from None


def largest_node_cpus(ray: Any) -> float:
    """The CPU count of the largest alive node of the cluster ``ray`` is connected to."""
    return max((n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
