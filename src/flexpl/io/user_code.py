"""Import paths of user code named in a scenario: ``"package.module:function"``.

A scenario can name a model factory, a dataset loader, a loss or an aggregator by import
path (``model: {factory: "mypkg.models:build"}``), so every process that loads the scenario
(``flexpl worker`` under torchrun, the dist backend's workers) builds the same object.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from flexpl.errors import UserError


def is_import_path(text: Any) -> bool:
    """True for a string of the form ``module:attribute`` (no spaces)."""
    return isinstance(text, str) and text.count(":") == 1 and all(text.split(":")) and " " not in text


def import_object(path: Any, field: str) -> Any:
    """The object ``path`` (``"module:attr"``, ``attr`` may be dotted) names; one-line ``UserError`` naming ``field``.

    The current directory is tried too when the module is not found on ``sys.path`` (a
    console script such as ``flexpl`` does not put it there).
    """
    if not is_import_path(path):
        raise UserError(f"{field}: {path!r} is not an import path; write 'module:function' "
                        "(e.g. mypkg.models:build)")
    mod_name, attr = path.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != mod_name.split(".")[0] or cwd in sys.path:
            raise UserError(f"{field}: cannot import '{mod_name}': {exc}; check the spelling and PYTHONPATH") from None
        sys.path.append(cwd)
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc2:
            sys.path.remove(cwd)
            raise UserError(f"{field}: cannot import '{mod_name}': {exc2}; check the spelling and "
                            "PYTHONPATH") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{field}: module '{mod_name}' has no attribute '{attr}'; check the name after ':'")
        obj = getattr(obj, part)
    return obj


def import_path_of(obj: Any) -> str | None:
    """``"module:qualname"`` that imports back to ``obj`` in a fresh process, or None (e.g. defined in ``__main__``)."""
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not mod or not qual or mod in ("__main__", "__mp_main__") or "<" in qual:
        return None
    try:
        target: Any = importlib.import_module(mod)
        for part in qual.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        return None
    return f"{mod}:{qual}" if target is obj else None
