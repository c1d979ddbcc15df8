"""Fault injection for tests: the only place that reads the test-only fault variables.

Two environment variables make a run fail on purpose, at a reproducible point, so the
tests can check what survives a crash and how a failure is reported. Neither is meant
for users; unset (the default), both hooks do nothing.

``FLEXPL_TEST_KILL_AT="ROUND:STEP"``
    The simulator's process SIGKILLs itself right after joint training step ``STEP``
    (1-based) of round ``ROUND``: a run killed mid-round (tests of checkpoint/resume and of
    stale results), after the checkpoint of the previous round is written. The engine calls :func:`after_train_step` after every step.

``FLEXPL_DIST_FAULT="RANK:ROUND:MODE"``
    In a distributed run, the worker of rank ``RANK``, in round ``ROUND``: ``exit`` calls
    ``os._exit(17)`` at its first training step, ``hang`` sleeps there (a hung node),
    ``raise`` raises a ``RuntimeError`` there, ``slow-eval`` (rank 0) sleeps through three
    timeouts while evaluating, ``exit-before-commit`` calls ``os._exit(17)`` at the end of the
    round, after its checkpoint file is written and before the checkpoint is committed (a torn
    save: see [Note: dist checkpoints] in ``flexpl.dist.checkpoint``). The worker asks
    :func:`dist_fault` for its hook once.
    Under ``--emulate-links`` three more modes write bytes that are not a FlexPL message to
    a peer's data port (:func:`emulation_fault`, read by ``flexpl.dist.emulate.comm.EmuComm``):
    ``pickle-frame`` and ``garbage-frame`` replace the rank's first training message of the
    round with a pickled object (whose unpickling would create the file named by
    ``FLEXPL_DIST_FAULT_MARKER``) or with junk bytes; ``pickle-hello`` (round 0: set-up)
    replaces its greeting on every data connection it opens with such a pickle.
    ``link-down`` and ``link-flap`` set the rank's data veth down (on the hub's side, as a
    pulled cable) just before its first training message of the round: for good, or for
    ``FLAP_S`` seconds.

A malformed value is a ``UserError`` naming the variable and the expected form.
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
import time
from collections.abc import Callable
from typing import Any

from flexpl.errors import UserError

KILL_ENV = "FLEXPL_TEST_KILL_AT"
DIST_ENV = "FLEXPL_DIST_FAULT"
FRAME_MODES = ("pickle-frame", "garbage-frame", "pickle-hello")
LINK_MODES = ("link-down", "link-flap")
DIST_MODES = ("exit", "hang", "raise", "slow-eval", "exit-before-commit", *FRAME_MODES, *LINK_MODES)
FLAP_S = 1.5  # how long link-flap keeps the link down
MARKER_ENV = "FLEXPL_DIST_FAULT_MARKER"
GARBAGE = bytes(range(256)) * 4  # junk a peer's data port must refuse


@functools.lru_cache(maxsize=8)
def _kill_point(raw: str) -> tuple[int, int] | None:
    if not raw:
        return None
    try:
        rnd, step = (int(v) for v in raw.split(":"))
    except ValueError:
        raise UserError(f"{KILL_ENV}: '{raw}' is not ROUND:STEP (two integers), e.g. 3:2; "
                        "unset it for a normal run") from None
    return rnd, step


def kill_point() -> tuple[int, int] | None:
    """(round, step) after which the process kills itself, from ``FLEXPL_TEST_KILL_AT``; None when unset."""
    return _kill_point(os.environ.get(KILL_ENV, ""))


def after_train_step(rnd: int, step: int, before_kill: Callable[[], None] | None = None) -> None:
    """The kill hook: SIGKILL this process if (``rnd``, ``step``) is ``FLEXPL_TEST_KILL_AT``'s point.

    ``before_kill`` runs first (the simulator passes ``flexpl.sim.checkpoint.drain``).
    """
    if kill_point() == (rnd, step):  # die like a killed process, mid-round: nothing is flushed or cleaned
        # the previous round's checkpoint, written in the background, is complete first, so the
        # point is reproducible (a kill during that write is tested apart: tests/test_checkpoint.py)
        if before_kill is not None:
            before_kill()
        os.kill(os.getpid(), signal.SIGKILL)


class _Touch:
    """A pickled object whose unpickling creates a file: what a peer must never unpickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def evil_pickle() -> bytes:
    """A pickle that, if anyone unpickled it, would create ``FLEXPL_DIST_FAULT_MARKER``'s file."""
    return pickle.dumps(_Touch(os.environ.get(MARKER_ENV) or os.devnull))


def emulation_fault(rank: int) -> tuple[int, str] | None:
    """(round, mode) when ``FLEXPL_DIST_FAULT`` asks ``rank`` for a fault of the emulated network (a message
    that is not FlexPL's, a link down; see above), else None."""
    spec = _parse(os.environ.get(DIST_ENV, ""))
    if spec is None or spec[0] != rank or spec[2] not in (*FRAME_MODES, *LINK_MODES):
        return None
    return spec[1], spec[2]


def _parse(spec: str) -> tuple[int, int, str] | None:
    if not spec:
        return None
    try:
        r, rnd_at, mode = spec.split(":")
        r_i, rnd_i = int(r), int(rnd_at)
    except ValueError:
        raise UserError(f"{DIST_ENV}: '{spec}' is not RANK:ROUND:MODE, e.g. 3:2:exit; "
                        "unset it for a normal run") from None
    if mode not in DIST_MODES:
        raise UserError(f"{DIST_ENV}: unknown mode '{mode}'; allowed: {', '.join(DIST_MODES)}")
    return r_i, rnd_i, mode


def dist_fault(rank: int, timeout_s: float) -> Callable[[int, str], None]:
    """This rank's hook from ``FLEXPL_DIST_FAULT``: called with (round, ``"train"``, ``"eval"`` or ``"commit"``).

    A no-op when the variable is unset or names another rank.
    """
    spec = _parse(os.environ.get(DIST_ENV, ""))
    if spec is None:
        return lambda rnd, where: None
    r_i, rnd_i, mode = spec

    def hook(rnd: int, where: str) -> None:
        if r_i != rank or rnd != rnd_i:
            return
        if mode == "slow-eval" and where == "eval":
            time.sleep(3 * timeout_s)
        elif mode == "hang" and where == "train":
            time.sleep(10**6)
        elif (mode == "exit" and where == "train") or (mode == "exit-before-commit" and where == "commit"):
            os._exit(17)
        elif mode == "raise" and where == "train":
            raise RuntimeError(f"injected fault ({DIST_ENV})")
    return hook
