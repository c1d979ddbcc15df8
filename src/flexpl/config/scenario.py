"""Scenario schema (pydantic v2), YAML loading, ``--set`` overrides, and one-line errors.

A scenario says which data, which model, which nodes and links, and which strategy or
plan. Built-in scenarios ship in ``flexpl/scenarios/*.yaml``; a path to a YAML file works
the same way. ``--set dotted.key=value`` changes one field before validation (the value
is parsed as YAML, so ``--set training.rounds=3`` gives an integer).

The schema's sections live in their own modules (:mod:`flexpl.config.training`,
:mod:`flexpl.config.data`, :mod:`flexpl.config.plan`, :mod:`flexpl.config.engine`, on
:mod:`flexpl.config.base`), and loading before validation in :mod:`flexpl.config.load`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from flexpl.config.base import _Strict
from flexpl.config.data import DataCfg
from flexpl.config.engine import CostsCfg, EnergyCfg, EngineCfg, EvaluationCfg, FailuresCfg
from flexpl.config.load import (
    _one_line,
    _read_scenario_text,
    apply_set,
    apply_strategy_overrides,
    parse_set,
)
from flexpl.config.plan import LinkCfg, NodeCfg, PlanCfg
from flexpl.config.tracking import check_tracking
from flexpl.config.training import TrainingCfg
from flexpl.errors import UserError
from flexpl.io.user_code import check_import_path, import_object, scenario_folder, user_code_checked

DEFAULT_SCENARIO = "edge-fmnist"


class MlpOptions(_Strict):
    """Options of ``model: {name: mlp, ...}``."""

    # widths of the hidden layers; strict: a YAML true or 1.5 is not a width
    hidden: list[Annotated[int, Field(strict=True, gt=0)]] = Field(default_factory=lambda: [200, 200])


class NoOptions(_Strict):
    """A zoo model that takes no options (``cnn``, ``lenet5``)."""


# Option schemas of the zoo models, by name: ``model: {name: NAME, **options}`` is checked
# against it when the scenario loads (one line naming the field, exit 2), so a bad width
# fails before any work instead of crashing in torch or training a zero-FLOP model.
# Models without an entry here are checked by ``flexpl.models.build_model`` only.
MODEL_OPTIONS: dict[str, type[BaseModel]] = {"mlp": MlpOptions, "cnn": NoOptions, "lenet5": NoOptions}


def check_model_spec(spec: Any) -> None:
    """Validate ``model:`` (a zoo name, or a mapping with ``name`` and that model's options).

    Raises ``ValueError`` with one line naming the field, e.g. ``model.hidden[0]: ...``.
    """
    if isinstance(spec, str):
        return
    if "factory" in spec:  # an import path, e.g. model: {factory: "mypkg.models:build", width: 64}
        if "name" in spec:
            raise ValueError("model.factory: give either name or factory, not both")

        check_import_path(spec["factory"], "model.factory")
        if user_code_checked() and not callable(import_object(spec["factory"], "model.factory")):
            raise ValueError(f"model.factory: '{spec['factory']}' is not callable")
        return
    name = spec.get("name")
    if name is None:
        raise ValueError("model.name: required field is missing (e.g. model: {name: mlp, hidden: [64]})")
    if not isinstance(name, str):
        raise ValueError(f"model.name: must be a model name such as mlp, got {name!r}")
    schema = MODEL_OPTIONS.get(name)
    if schema is None:
        return
    options = {k: v for k, v in spec.items() if k != "name"}
    try:
        schema.model_validate(options)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(schema.model_fields) or "none"
            raise ValueError(f"model{loc}: unknown option for '{name}'; its options: {allowed}") from None
        raise ValueError(f"model{loc}: {err['msg']} (got {err.get('input')!r})") from None


class Scenario(_Strict):
    """A whole scenario: data, model, training, topology, strategy or plan."""

    name: str = "scenario"
    # at most 2**32 - 1, the range every seeded generator takes (torch's is 64 bits; a 31-digit seed
    # found by the fuzzer overflowed it in torch.manual_seed)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    data: DataCfg = Field(default_factory=DataCfg)
    model: str | dict[str, Any] = "mlp"
    training: TrainingCfg = Field(default_factory=TrainingCfg)
    nodes: list[NodeCfg]
    links: list[LinkCfg] = Field(default_factory=list)
    server: str | None = None  # aggregator / central node; default: first node that holds no data
    strategy: str = "fl"
    plan: PlanCfg | None = None
    energy: EnergyCfg = Field(default_factory=EnergyCfg)
    costs: CostsCfg = Field(default_factory=CostsCfg)
    engine: EngineCfg = Field(default_factory=EngineCfg)
    evaluation: EvaluationCfg = Field(default_factory=EvaluationCfg)
    failures: FailuresCfg = Field(default_factory=FailuresCfg)
    # dotted-key overrides applied only when that strategy runs (see apply_strategy_overrides)
    strategy_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # experiment trackers, as --track: tensorboard[:DIR], mlflow[:URI] (flexpl.config.tracking)
    tracking: list[str] = Field(default_factory=list)

    @field_validator("tracking", mode="before")
    @classmethod
    def _check_tracking(cls, v: Any) -> list[str]:
        return check_tracking(v)

    @field_validator("model")
    @classmethod
    def _check_model(cls, v: str | dict[str, Any]) -> str | dict[str, Any]:
        check_model_spec(v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _expand_counts(cls, data: Any) -> Any:
        """Expand ``count: N`` on a node or link entry into N entries, ``{i}`` in names becoming 0..N-1."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("nodes", "links"):
            items = data.get(key)
            if not isinstance(items, list) or not any(isinstance(x, dict) and "count" in x for x in items):
                continue
            out: list[Any] = []
            for i, item in enumerate(items):
                if not (isinstance(item, dict) and "count" in item):
                    out.append(item)
                    continue
                n = item["count"]
                if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                    raise ValueError(f"{key}[{i}].count: must be a positive integer (got {n!r})")
                names = [item.get("name")] if key == "nodes" else list(item.get("between") or [])
                if not any(isinstance(v, str) and "{i}" in v for v in names):
                    what = "name" if key == "nodes" else "between"
                    raise ValueError(f"{key}[{i}].{what}: with count, put '{{i}}' in the {what} "
                                     "(e.g. dev{i}); it becomes 0..count-1")
                for k in range(n):
                    one = {f: v for f, v in item.items() if f != "count"}
                    if key == "nodes":
                        one["name"] = str(item["name"]).replace("{i}", str(k))
                    else:
                        one["between"] = [str(v).replace("{i}", str(k)) for v in item["between"]]
                    out.append(one)
            data[key] = out
        return data

    @model_validator(mode="after")
    def _check_topology(self) -> Scenario:
        names = [n.name for n in self.nodes]
        seen: set[str] = set()
        for i, n in enumerate(names):
            if n in seen:
                raise ValueError(f"nodes[{i}].name: duplicate node name '{n}'; names must be unique")
            seen.add(n)
        if not any(n.holds_data for n in self.nodes):
            raise ValueError("nodes: no node holds data; set holds_data: true on at least one node")
        for i, link in enumerate(self.links):
            for end in link.between:
                if end not in seen:
                    raise ValueError(f"links[{i}].between: unknown node '{end}'; nodes are {', '.join(names)}")
            if link.between[0] == link.between[1]:
                raise ValueError(f"links[{i}].between: a link joins two different nodes")
        for n in self.failures.nodes:
            if n not in seen:
                raise ValueError(f"failures.nodes.{n}: unknown node '{n}'; nodes are {', '.join(names)}")
        link_names = {f"{a}-{b}" for a, b in (ln.between for ln in self.links)}
        for n in self.failures.links:
            if n not in link_names:
                raise ValueError(f"failures.links.{n}: unknown link '{n}'; links are {', '.join(sorted(link_names))}")
        if self.server is not None and self.server not in seen:
            raise ValueError(f"server: unknown node '{self.server}'; nodes are {', '.join(names)}")
        if self.server is None and all(n.holds_data for n in self.nodes):
            raise ValueError("server: every node holds data; add a server node or name one with 'server:'")
        return self

    @property
    def server_name(self) -> str:
        """The aggregator/central node."""
        return self.server or next(n.name for n in self.nodes if not n.holds_data)

    @property
    def data_nodes(self) -> list[str]:
        """Names of nodes that hold training data, in scenario order."""
        return [n.name for n in self.nodes if n.holds_data]

    def resolved(self) -> dict[str, Any]:
        """The scenario as plain data (what ``config.yaml`` holds); ``tracking`` only when it names a tracker."""
        data = self.model_dump(mode="json")
        if not data.get("tracking"):
            data.pop("tracking", None)
        return data

    def digest(self) -> str:
        """SHA-256 of the resolved scenario (stable key order), without ``tracking``.

        Tracking never changes a result, so a scenario hashes the same tracked or not (and as it
        did before the key existed); :func:`flexpl.io.results.config_digest` leaves it out too.
        """
        data = self.resolved()
        data.pop("tracking", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- loading


def validate_scenario(data: Any) -> Scenario:
    """Validate plain data into a :class:`Scenario`, turning errors into one-line ``UserError``s."""
    if not isinstance(data, dict):
        raise UserError("scenario: the YAML must be a mapping of fields (name, data, model, nodes, ...)")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise UserError(_one_line(exc)) from None


def load_scenario(name_or_path: str | None = None, sets: list[str] | None = None,
                  strategy: str | None = None, seed: int | None = None) -> Scenario:
    """Load a built-in or file scenario, apply ``--set`` overrides, strategy and seed, and validate."""
    text, where = _read_scenario_text(name_or_path or DEFAULT_SCENARIO)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"scenario: '{where}' is not valid YAML{pos}; fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"scenario: '{where}' must hold a mapping of fields (name, data, model, nodes, ...)")
    folder = os.path.dirname(os.path.abspath(where)) if os.path.isfile(where) else None
    with scenario_folder(folder):  # user code it names: on sys.path or beside the file, nowhere else
        return scenario_from_data(data, sets, strategy, seed)


def scenario_from_data(data: dict[str, Any], sets: list[str] | None = None, strategy: str | None = None,
                       seed: int | None = None) -> Scenario:
    """Validate a scenario given as plain data (changed in place) after ``--set`` overrides, strategy and seed."""
    for item in sets or []:
        apply_set(data, item)
    if strategy is not None:
        data["strategy"] = strategy
    if seed is not None:
        data["seed"] = seed
    applied = apply_strategy_overrides(data, [".".join(parse_set(item)[0]) for item in sets or []])
    try:
        return validate_scenario(data)
    except UserError as exc:
        if not any(str(exc).startswith(k) for k in applied):
            raise
        raise UserError(f"{exc} (after strategy_overrides.{data.get('strategy')}: {', '.join(applied)})") from None


def scenario_user_code(name_or_path: str | None, sets: list[str] | None = None) -> list[tuple[str, str]]:
    """The ``(field, "module:function")`` user code a scenario and its ``--set`` items would import.

    Read from the YAML without validating (nothing is imported); a scenario that does not
    read or parse gives ``[]`` (loading it reports the problem in one line).
    """
    from flexpl.io.user_code import user_code_in

    data = _raw_scenario(name_or_path, sets)
    return user_code_in(data) if data is not None else []


def _raw_scenario(name_or_path: str | None, sets: list[str] | None) -> dict[str, Any] | None:
    """A scenario's YAML after its ``--set`` items, unvalidated; None where it does not read or parse."""
    try:
        data = yaml.safe_load(_read_scenario_text(name_or_path or DEFAULT_SCENARIO)[0])
        if not isinstance(data, dict):
            return None
        for item in sets or []:
            apply_set(data, item)
    except (UserError, yaml.YAMLError, OSError, ValueError, TypeError):
        return None
    return data


def scenario_tracking(name_or_path: str | None, sets: list[str] | None = None) -> list[str]:
    """A scenario's ``tracking:`` entries after its ``--set`` items, checked, without validating the rest.

    For the commands that load the scenario per cell (sweep, tune); a bad entry is a one-line
    UserError, and a scenario that does not read or parse gives ``[]`` (loading it reports that).
    """
    data = _raw_scenario(name_or_path, sets)
    if data is None:
        return []
    try:
        return list(check_tracking(data.get("tracking", [])))
    except ValueError as exc:
        raise UserError(str(exc)) from None
