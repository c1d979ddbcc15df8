"""Scenario schema, ``data:``: the dataset, its partition over data nodes, transforms and fallback.

Part of the scenario schema, :mod:`flexpl.config.scenario`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from flexpl.config.base import _Strict
from flexpl.io.user_code import check_import_path, import_object, user_code_checked


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

            check_import_path(v["factory"], "data.dataset.factory")
            if user_code_checked() and not callable(import_object(v["factory"], "data.dataset.factory")):
                raise ValueError(f"data.dataset.factory: '{v['factory']}' is not callable")
            return v
        if v not in DATASETS and v not in REGISTERED:
            raise ValueError(f"data.dataset: unknown dataset {v!r}; allowed: {', '.join((*DATASETS, *REGISTERED))} "
                             "(or flexpl.register_dataset, or data.dataset: {factory: 'module:function'})")
        return v
