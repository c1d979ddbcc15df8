"""One live command per results folder: an advisory lock held for a run's lifetime.

``flexpl run``, ``compare`` and ``sweep`` (and each sweep cell) hold ``FOLDER/.flexpl.lock``
with ``fcntl.flock`` while they write ``FOLDER``. The file holds the holder's pid and command,
so a second command into the same folder is refused in one line naming that pid. The kernel
drops a ``flock`` when its holder dies (even by ``kill -9``), so a dead holder's lock is simply
taken over; the file it left behind is reused.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from flexpl.errors import UserError

LOCK_NAME = ".flexpl.lock"


def _holder(fd: int) -> str:
    """What the lock file says about its holder: ``"pid 123, flexpl run"`` (or ``"an unknown process"``)."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        text = []
    if text and text[0].isdigit():
        return f"pid {text[0]}" + (f", {' '.join(text[1:])}" if len(text) > 1 else "")
    return "an unknown process"


@contextlib.contextmanager
def hold_folder(path: str | Path, command: str, field: str = "--out") -> Iterator[Path]:
    """Hold ``path``'s advisory lock for the ``with`` block; yields ``path`` (created if missing).

    A folder another live process holds raises a one-line :class:`UserError` naming ``field``,
    the holder's pid and command, before anything is written. On exit the lock file is removed,
    and so is the folder if this call created it and nothing else was written into it.
    """
    import fcntl

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{field}: '{p}' is a file, not a folder; choose another path")
    created = not p.exists()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{field}: cannot create folder '{p}': {exc.strerror}") from None
    lock = p / LOCK_NAME
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if created:
                with contextlib.suppress(OSError):
                    p.rmdir()
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise UserError(f"{field}: folder '{p}' is not writable ({exc.strerror}); "
                                "choose a writable --out") from None
            if exc.errno == errno.ENOSPC:
                raise UserError(f"{field}: no space left on the device of '{p}' even for its lock file; "
                                "free some space or choose another --out") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(fd)
            os.close(fd)
            raise UserError(f"{field}: folder '{p}' is in use by a live flexpl command ({who}); wait for it "
                            "to finish, stop it, or choose another --out") from None
        # the holder before us may have removed the file between our open and our flock: retry on the new one
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
    except OSError:
        pass  # a full disk: the lock itself still holds, only the pid is not recorded
    try:
        yield p
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still holding it: a waiter that opened the old file retries (see above)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                p.rmdir()  # only if empty: a command that stopped before writing leaves nothing behind
