"""Scenario loading before validation: scenario files, ``--set`` overrides, strategy overrides, one-line errors.

Everything here works on the scenario as plain data (a dict from YAML); :mod:`flexpl.config.scenario`
validates it into a :class:`flexpl.config.scenario.Scenario`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flexpl.errors import UserError, one_line


def builtin_scenarios() -> dict[str, str]:
    """Built-in scenario names -> their first comment line (a one-line description)."""
    out = {}
    for f in sorted(resources.files("flexpl.scenarios").iterdir(), key=lambda p: p.name):
        if f.name.endswith(".yaml"):
            first = f.read_text().splitlines()[0] if f.read_text() else ""
            out[f.name[:-5]] = first.lstrip("# ").strip()
    return out


def _read_scenario_text(name_or_path: str) -> tuple[str, str]:
    p = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or p.exists():
        if p.is_dir():
            raise UserError(f"scenario: '{name_or_path}' is a folder; give a YAML file or a built-in name")
        try:
            return p.read_text(), str(p)
        except FileNotFoundError:
            raise UserError(f"scenario: file '{name_or_path}' not found; give a YAML file or one of: "
                            f"{', '.join(builtin_scenarios())}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"scenario: cannot read '{name_or_path}': {exc}") from None
    names = builtin_scenarios()
    if name_or_path not in names:
        raise UserError(f"scenario: unknown scenario '{name_or_path}'; built-in: {', '.join(names)} "
                        "(or a path to a .yaml file)")
    return resources.files("flexpl.scenarios").joinpath(f"{name_or_path}.yaml").read_text(), name_or_path


def parse_set(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value."""
    if "=" not in item:
        raise UserError(f"--set: '{item}' is not KEY=VALUE (e.g. --set training.rounds=3)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set: bad key '{key}'; use dotted names such as training.rounds")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_set(data: dict[str, Any], item: str) -> None:
    """Apply one ``--set`` override in place (list items by index: ``nodes.2.profile=rpi5``)."""
    path, value = parse_set(item)
    cur: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                raise UserError(f"--set {'.'.join(path)}: '{part}' is not an index of "
                                f"{'.'.join(path[:i]) or 'the scenario'} (0..{len(cur) - 1})")
            cur = cur[int(part)]
        else:
            if not isinstance(cur, dict):
                raise UserError(f"--set {'.'.join(path)}: {'.'.join(path[:i])} is not a mapping")
            if cur.get(part) is None:
                cur[part] = {}
            cur = cur[part]
    last = path[-1]
    if isinstance(cur, list):
        if not last.isdigit() or int(last) >= len(cur):
            raise UserError(f"--set {'.'.join(path)}: '{last}' is not an index (0..{len(cur) - 1})")
        cur[int(last)] = value
    elif isinstance(cur, dict):
        cur[last] = value
    else:
        raise UserError(f"--set {'.'.join(path)}: {'.'.join(path[:-1])} is not a mapping")


def _explain(err: Mapping[str, Any]) -> str:
    """What is wrong with one field of a scenario (a pydantic error dict), in the scenario's words."""
    if err["type"] == "extra_forbidden":
        return "unknown field; check the spelling (see flexpl scenarios --show NAME for a full example)"
    if err["type"] == "missing":
        return "required field is missing"
    return f"{err['msg']} (got {err.get('input')!r})"


def _one_line(exc: ValidationError) -> str:
    """A scenario's validation error as one line: its first problem (see :func:`flexpl.errors.one_line`)."""
    return one_line(exc, _explain)


def flatten_overrides(over: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``{training: {optimizer: {lr: 0.01}}}`` or ``{training.optimizer.lr: 0.01}`` -> ``[("training.optimizer.lr", 0.01)]``.

    Mappings are walked down to their leaves (so an override merges into the scenario
    rather than replacing a whole section); lists and scalars are leaves. Later entries win.
    """
    if not isinstance(over, dict):
        return [(prefix, over)] if prefix else []
    out: list[tuple[str, Any]] = []
    for k, v in over.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.extend(flatten_overrides(v, key))
        else:
            out.append((key, v))
    return out


def apply_strategy_overrides(data: dict[str, Any], protected: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Apply ``data["strategy_overrides"][strategy]`` to ``data`` in place, for the strategy ``data`` runs.

    Keys are dotted scenario fields (as for ``--set``). A key given on the command line
    (``protected``, e.g. the ``--set`` keys of a sweep or tune cell) wins over an override of
    the same field. The overrides stay in the scenario (``config.yaml`` shows them); applying
    them twice changes nothing. Returns the keys applied.
    """
    table = data.get("strategy_overrides")
    if not isinstance(table, dict):
        return []  # validation reports the wrong type
    mine = table.get(str(data.get("strategy", "fl")))
    if not isinstance(mine, dict):
        return []
    applied = []
    for key, value in flatten_overrides(mine):
        if key == "strategy" or key.startswith("strategy_overrides"):
            raise UserError(f"strategy_overrides.{data.get('strategy')}.{key}: cannot be overridden per strategy")
        if any(key == p or key.startswith(p + ".") or p.startswith(key + ".") for p in protected):
            continue
        apply_set(data, f"{key}={json.dumps(value)}")
        applied.append(key)
    return applied
