"""Where dataset files are looked for: ``$FLEXPL_DATA``, then the user cache folder (shared by every dataset)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(name: str) -> Path:
    """The user cache folder for ``name`` (``$XDG_CACHE_HOME/flexpl/<name>``)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "flexpl" / name


def search_dirs(name: str) -> list[Path]:
    """Folders searched for dataset ``name``, in order: ``$FLEXPL_DATA``, ``$FLEXPL_DATA/<name>``, the cache."""
    dirs: list[Path] = []
    env = os.environ.get("FLEXPL_DATA")
    if env:
        root = Path(env).expanduser()
        dirs += [root, root / name]
    dirs.append(cache_dir(name))
    return dirs
