"""Scenario schema (pydantic v2), YAML loading, ``--set`` overrides, and one-line errors.

A scenario says which data, which model, which nodes and links, and which strategy or
plan. Built-in scenarios ship in ``flexpl/scenarios/*.yaml``; a path to a YAML file works
the same way. ``--set dotted.key=value`` changes one field before validation (the value
is parsed as YAML, so ``--set training.rounds=3`` gives an integer).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from flexpl.errors import UserError

DEFAULT_SCENARIO = "edge-fmnist"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimizerCfg(_Strict):
    """Optimizer of every replica: SGD (with momentum) or Adam."""

    name: Literal["sgd", "adam"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)  # L2 penalty, SGD and Adam alike (torch.optim's weight_decay)
    reset_on_sync: bool = True  # a replica that receives averaged weights starts a fresh optimizer (as Flower does)
    # learning rate per round (see flexpl.engine.core.lr_at): constant; step: lr * gamma ** ((round-1) // step_every);
    # cosine: from lr down towards min_lr over training.rounds
    schedule: Literal["constant", "step", "cosine"] = "constant"
    step_every: PositiveInt = 1
    gamma: float = Field(0.5, gt=0.0, le=1.0)
    min_lr: float = Field(0.0, ge=0.0)
    clip_norm: PositiveFloat | None = None  # clip each stage replica's gradient to this L2 norm before a step

    @model_validator(mode="after")
    def _check_min_lr(self) -> OptimizerCfg:
        if self.schedule == "cosine" and self.min_lr > self.lr:
            raise ValueError(f"training.optimizer.min_lr: {self.min_lr:g} is above lr {self.lr:g}; "
                             "a cosine schedule decays from lr down to min_lr")
        return self


class AggregatorCfg(_Strict):
    """How FedAvg stages are aggregated (flexpl.aggregate): fedavg, fedprox (client proximal term), fedadam
    (server Adam on the pseudo-gradient, Reddi et al. 2021), a register_aggregator name, or "module:Class"."""

    kind: str = "fedavg"
    mu: float | None = Field(None, ge=0.0)            # fedprox: proximal weight (default 0.01)
    eta: PositiveFloat | None = None                  # fedadam: server learning rate (default 0.1)
    beta1: float | None = Field(None, ge=0.0, lt=1.0)  # fedadam: first-moment decay (default 0.9)
    beta2: float | None = Field(None, ge=0.0, lt=1.0)  # fedadam: second-moment decay (default 0.99)
    tau: PositiveFloat | None = None                  # fedadam: adaptivity (default 1e-9, as Flower)
    options: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of a custom aggregator

    @model_validator(mode="after")
    def _check_kind(self) -> AggregatorCfg:
        from flexpl.aggregate import check_aggregator_cfg

        check_aggregator_cfg(self)
        return self


class TrainingCfg(_Strict):
    """Rounds, local epochs, batch size, client sampling and optimizer."""

    rounds: PositiveInt = 5
    local_epochs: PositiveInt = 1
    batch_size: PositiveInt = 32
    clients_per_round: float = Field(1.0, gt=0.0, le=1.0)
    max_steps_per_round: PositiveInt | None = None  # cap on local steps per node per round (quick runs)
    eval_every: PositiveInt = 1
    checkpoint_every: NonNegativeInt = 1  # save the run state every k rounds (0: never)
    eval_test: bool = True  # evaluate on the test set (flexpl tune turns it off: it chooses on validation data)
    optimizer: OptimizerCfg = Field(default_factory=OptimizerCfg)
    # the training loss: a name (flexpl.aggregate.LOSSES, or register_loss) or an import path "module:function"
    # taking (logits, labels) and returning the batch mean; billed in FLOPs like cross-entropy
    loss: str = "cross_entropy"
    aggregator: AggregatorCfg = Field(default_factory=lambda: AggregatorCfg())

    @field_validator("loss")
    @classmethod
    def _check_loss(cls, v: str) -> str:
        from flexpl.aggregate import resolve_loss

        resolve_loss(v)  # a one-line UserError naming training.loss
        return v


class PartitionCfg(_Strict):
    """How training samples are split over data nodes."""

    kind: Literal["iid", "dirichlet", "shards"] = "iid"
    alpha: PositiveFloat = 0.5
    shards_per_node: PositiveInt = 2
    # dirichlet: every data node gets at least this many samples (redraw, then top up; see data/partition.py)
    min_samples: PositiveInt = 1


class TransformCfg(_Strict):
    """Image transform at load time: bilinear resize to a square, grey to ``channels`` (a repeat)."""

    resize: PositiveInt | None = None
    channels: Literal[1, 3] | None = None


class DataFallbackCfg(_Strict):
    """The dataset used instead when the scenario's is not found on this machine (e.g. CIFAR-10 offline)."""

    dataset: Literal["fashion-mnist", "digits"] = "fashion-mnist"
    transform: TransformCfg | None = None


class DataCfg(_Strict):
    """Dataset and partition."""

    # a built-in name (fashion-mnist, digits, cifar10, cifar100, synthetic), a register_dataset name,
    # or {factory: "module:function", **options}: an import path every process can load
    dataset: str | dict[str, Any] = "digits"
    partition: PartitionCfg = Field(default_factory=PartitionCfg)
    max_train: PositiveInt | None = None
    max_test: PositiveInt | None = None
    # synthetic only (flexpl.data.synthetic): sample shape, classes, train/test sizes
    shape: list[PositiveInt] | None = None
    classes: PositiveInt | None = None
    train: PositiveInt | None = None
    test: PositiveInt | None = None
    transform: TransformCfg | None = None
    fallback: DataFallbackCfg | None = None  # when the dataset's files are not found (never on a bad file)
    # a seeded fraction of each data node's samples held out for validation (val_accuracy per round)
    validation_fraction: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("dataset")
    @classmethod
    def _check_dataset(cls, v: str | dict[str, Any]) -> str | dict[str, Any]:
        from flexpl.data import DATASETS, REGISTERED

        if isinstance(v, dict):
            if "factory" not in v:
                raise ValueError("data.dataset.factory: required field is missing (e.g. data.dataset: "
                                 "{factory: 'mypkg.data:load'})")
            from flexpl.imports import import_object

            if not callable(import_object(v["factory"], "data.dataset.factory")):
                raise ValueError(f"data.dataset.factory: '{v['factory']}' is not callable")
            return v
        if v not in DATASETS and v not in REGISTERED:
            raise ValueError(f"data.dataset: unknown dataset {v!r}; allowed: {', '.join((*DATASETS, *REGISTERED))} "
                             "(or flexpl.register_dataset, or data.dataset: {factory: 'module:function'})")
        return v


class NodeCfg(BaseModel):
    """A node; any device-profile field given inline overrides the profile's value."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    profile: str
    holds_data: bool = False
    rank: NonNegativeInt | None = None  # for the distributed backend; default: position in the list

    def overrides(self) -> dict[str, Any]:
        """Inline profile fields."""
        return dict(self.model_extra or {})


class LinkCfg(BaseModel):
    """A link between two nodes; 'up' is from the first to the second. Inline fields override the profile."""

    model_config = ConfigDict(extra="allow")
    between: tuple[str, str]
    profile: str

    def overrides(self) -> dict[str, Any]:
        """Inline profile fields."""
        return dict(self.model_extra or {})


class SyncCfg(_Strict):
    """Sync rule of a stage."""

    kind: Literal["none", "fedavg", "relay"] = "none"
    every: PositiveInt = 1
    unit: Literal["round", "step"] = "round"
    at: str | None = None
    scope: Literal["all", "group"] = "all"  # fedavg at one aggregator, or per group at each group's head


class StageCfg(_Strict):
    """One stage of an explicit plan (its blocks come from ``plan.cut``)."""

    replication: Literal["per_node", "per_group", "single"] = "single"
    host: str = "own"
    sync: SyncCfg = Field(default_factory=SyncCfg)


class PlanCfg(_Strict):
    """Plan overrides for a preset (``cut``, ``junction``, ``schedule``, ``groups``) or a full plan (``stages``)."""

    name: str | None = None
    cut: int | list[int] | None = None
    junction: Literal["batch", "features"] | None = None
    schedule: Literal["lockstep", "sequential", "round_robin"] | None = None
    collect_data: bool = False
    groups: dict[str, list[str]] | None = None
    stages: list[StageCfg] | None = None
    # FPL presets: average the device fronts (none | group | all) every k rounds; the edge trunks every k rounds
    front_sync: Literal["none", "group", "all"] | None = None
    front_sync_every: PositiveInt | None = None
    trunk_sync_every: PositiveInt | None = None


class EnergyCfg(_Strict):
    """Energy accounting options."""

    include_idle: bool = False  # add idle power x idle time of every node to energy_j_total


class CostsCfg(_Strict):
    """What the cost totals include."""

    include_eval: bool = False  # add evaluation FLOPs and energy (eval_flops, eval_energy_j) to the totals


class EvaluationCfg(_Strict):
    """Accuracy targets: the cost to reach each one is reported (see flexpl.targets)."""

    targets: list[float] = Field(default_factory=list)  # test accuracies in (0, 1], e.g. [0.7, 0.75]
    stop_at_target: bool = False  # stop after the round in which the highest target is reached

    @model_validator(mode="after")
    def _check_targets(self) -> EvaluationCfg:
        for i, a in enumerate(self.targets):
            if not 0.0 < a <= 1.0:
                raise ValueError(f"evaluation.targets[{i}]: a target accuracy is in (0, 1], got {a:g}")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError("evaluation.targets: a target is listed twice; list each accuracy once")
        if self.stop_at_target and not self.targets:
            raise ValueError("evaluation.stop_at_target: no target to stop at; add evaluation.targets "
                             "(or --target-accuracy A)")
        return self


class EngineCfg(_Strict):
    """Engine options."""

    backend: Literal["sim", "dist"] = "sim"
    timeout_s: PositiveFloat = 60.0  # distributed backend: how long a rank waits for a peer
    # simulator: how replicas run (see flexpl.engine.executor); auto picks per plan and model
    executor: Literal["auto", "sequential", "processes", "vectorized"] = "auto"
    workers: PositiveInt | None = None  # processes: worker count (default: CPU cores, at most one per data node)
    vector_chunk: PositiveInt = 32  # vectorized: replicas trained together in one vmapped call (or working-model clients per stacked arena)


Probability = Field(0.0, ge=0.0, le=1.0)


class StragglerCfg(_Strict):
    """Compute-time multiplier drawn per node and round: none, uniform(low, high), or exp(sigma*|N(0,1)|)."""

    kind: Literal["none", "uniform", "lognormal"] = "none"
    low: float = Field(1.0, ge=1.0)
    high: float = Field(1.0, ge=1.0)
    sigma: float = Field(0.5, ge=0.0)


class NodeFailureCfg(_Strict):
    """Per-node overrides of the failure model."""

    dropout: float | None = Field(None, ge=0.0, le=1.0)
    host_failure: float | None = Field(None, ge=0.0, le=1.0)
    straggler: StragglerCfg | None = None


class LinkFailureCfg(_Strict):
    """Per-link overrides of the failure model."""

    outage: float | None = Field(None, ge=0.0, le=1.0)
    loss: float | None = Field(None, ge=0.0, lt=1.0)


class FailuresCfg(_Strict):
    """What goes wrong at the edge, drawn from the scenario's seed (all off by default)."""

    dropout: float = Probability            # a data node misses a round (after receiving any weights)
    host_failure: float = Probability       # a node holding a shared stage fails: the round is redone
    link_outage: float = Probability        # a link is down for a round: nodes that need it sit it out
    transfer_loss: float = Field(0.0, ge=0.0, lt=1.0)  # a transmission is lost and sent again
    straggler: StragglerCfg = Field(default_factory=StragglerCfg)
    deadline_s: PositiveFloat | None = None  # FedAvg aggregates only updates that arrive within it
    max_redos: PositiveInt = 20
    nodes: dict[str, NodeFailureCfg] = Field(default_factory=dict)
    links: dict[str, LinkFailureCfg] = Field(default_factory=dict)  # keyed by link name "a-b"

    @property
    def active(self) -> bool:
        """True when any failure can happen."""
        return bool(self.dropout or self.host_failure or self.link_outage or self.transfer_loss
                    or self.straggler.kind != "none" or self.deadline_s or self.nodes or self.links)


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
        from flexpl.imports import import_object

        if not callable(import_object(spec["factory"], "model.factory")):
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
    seed: NonNegativeInt = 0
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
        """The scenario as plain data (what ``config.yaml`` holds)."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """SHA-256 of the resolved scenario (stable key order)."""
        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- loading


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


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ""
    for part in err["loc"]:
        if isinstance(part, int):
            loc += f"[{part}]"
        elif not str(part).startswith("function-after"):
            loc += ("." if loc else "") + str(part)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field; check the spelling (see flexpl scenarios --show NAME for a full example)"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "value_error":
        return str(err.get("ctx", {}).get("error", msg))
    elif err["type"] == "literal_error":
        msg = f"{msg} (got {err.get('input')!r})"
    else:
        msg = f"{msg} (got {err.get('input')!r})"
    extra = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
    return f"{loc or 'scenario'}: {msg}{extra}"


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
