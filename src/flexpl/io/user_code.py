"""Import paths of user code named in a scenario: ``"package.module:function"``.

A scenario can name a model factory, a dataset loader, a loss or an aggregator by import
path (``model: {factory: "mypkg.models:build"}``), so every process that loads the scenario
(``flexpl worker`` under torchrun, the dist backend's workers) builds the same object.

Such code runs with the user's rights, so FlexPL says which code a scenario will import
(:func:`user_code_in`, printed by ``flexpl scenarios --show FILE`` and at the start of every
run) and can refuse it: ``--no-user-code`` or ``FLEXPL_NO_USER_CODE=1`` (:func:`forbid_user_code`,
:func:`user_code_forbidden`). A module name must be a dotted name of identifiers (no relative
import, no file path), and it is looked up on ``sys.path`` and in the folder of the scenario
file that names it (:func:`scenario_folder`) only: never in the current folder or elsewhere.
Commands that only read finished results validate a scenario with :func:`user_code_unchecked`,
which checks an import path's spelling and imports nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from flexpl.errors import UserError

NO_USER_CODE_ENV = "FLEXPL_NO_USER_CODE"
_forbidden: list[str] = []  # why user code may not be imported now (innermost last)
_folders: list[str] = []  # folders of the scenario files being loaded (innermost last)
_unchecked: list[bool] = []  # inside user_code_unchecked()


def user_code_forbidden() -> str | None:
    """Why importing user code is refused now (``--no-user-code``, the environment, a reading command), or None."""
    if _forbidden:
        return _forbidden[-1]
    if os.environ.get(NO_USER_CODE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return f"{NO_USER_CODE_ENV} is set"
    return None


@contextlib.contextmanager
def forbid_user_code(reason: str) -> Iterator[None]:
    """Inside the block, :func:`import_object` refuses every import path in one line that gives ``reason``."""
    _forbidden.append(reason)
    try:
        yield
    finally:
        _forbidden.pop()


@contextlib.contextmanager
def scenario_folder(folder: str | os.PathLike[str] | None) -> Iterator[None]:
    """Inside the block, a module not found on ``sys.path`` is looked up in ``folder`` (a scenario file's own)."""
    _folders.append(os.path.abspath(folder) if folder is not None else "")
    try:
        yield
    finally:
        _folders.pop()


@contextlib.contextmanager
def user_code_unchecked() -> Iterator[None]:
    """Inside the block, validating a scenario checks import paths' spelling only and imports nothing.

    For commands that read finished results (``flexpl sweep`` deciding which cells are done):
    they need a scenario's digest, not its code.
    """
    _unchecked.append(True)
    try:
        yield
    finally:
        _unchecked.pop()


def user_code_checked() -> bool:
    """False inside :func:`user_code_unchecked`: validators then must not import an import path."""
    return not _unchecked


def user_code_in(data: Any, where: str = "") -> list[tuple[str, str]]:
    """Every ``(field, "module:function")`` a scenario (plain data) would import, in file order.

    The fields are ``model.factory``, ``data.dataset.factory``, ``training.loss``,
    ``training.aggregator.kind`` and the same under ``strategy_overrides``: any ``factory``,
    ``loss`` or aggregator ``kind`` whose value is an import path.
    """
    found: list[tuple[str, str]] = []
    if isinstance(data, Mapping):
        for k, v in data.items():
            field = f"{where}.{k}" if where else str(k)
            if isinstance(v, str) and is_import_path(v) and (
                    k in ("factory", "loss") or (k == "kind" and where.endswith("aggregator"))):
                found.append((field, v))
            else:
                found.extend(user_code_in(v, field))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found.extend(user_code_in(v, f"{where}[{i}]"))
    return found


def is_import_path(text: Any) -> bool:
    """True for a string of the form ``module:attribute`` (no spaces)."""
    return isinstance(text, str) and text.count(":") == 1 and all(text.split(":")) and " " not in text


def check_import_path(path: Any, field: str) -> tuple[str, str]:
    """``(module, attribute)`` of a well-spelled import path; else a one-line ``UserError`` naming ``field``."""
    if not is_import_path(path):
        raise UserError(f"{field}: {path!r} is not an import path; write 'module:function' "
                        "(e.g. mypkg.models:build)")
    mod_name, attr = path.split(":")
    if not all(part.isidentifier() for part in mod_name.split(".")) or not all(
            part.isidentifier() for part in attr.split(".")):
        raise UserError(f"{field}: {path!r} is not an import path; write 'module:function' with dotted Python "
                        "names (no relative import, no file path), e.g. mypkg.models:build")
    return mod_name, attr


def import_object(path: Any, field: str) -> Any:
    """The object ``path`` (``"module:attr"``, ``attr`` may be dotted) names; one-line ``UserError`` naming ``field``.

    The module is looked up on ``sys.path`` and, when not found there, in the folder of the
    scenario file being loaded (:func:`scenario_folder`), which then stays on ``sys.path``
    (so processes started from this one find it too); nowhere else.
    """
    mod_name, attr = check_import_path(path, field)
    why = user_code_forbidden()
    if why:
        raise UserError(f"{field}: the scenario imports user code '{path}', refused because {why}; "
                        "remove that field or run without --no-user-code")
    where = "sys.path" + (f" or the scenario's folder {_folders[-1]}" if _folders and _folders[-1] else "")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        folder = _folders[-1] if _folders else ""
        if exc.name != mod_name.split(".")[0] or not folder or folder in sys.path:
            raise UserError(f"{field}: cannot import '{mod_name}' from {where}: {exc}; put it beside the "
                            "scenario file or on PYTHONPATH") from None
        sys.path.append(folder)
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc2:
            sys.path.remove(folder)
            raise UserError(f"{field}: cannot import '{mod_name}' from {where}: {exc2}; put it beside the "
                            "scenario file or on PYTHONPATH") from None
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
