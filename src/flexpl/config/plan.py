"""Scenario schema, ``nodes:``, ``links:`` and ``plan:``: the topology and the plan's options.

Part of the scenario schema, :mod:`flexpl.config.scenario`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from flexpl.config.base import _Strict


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
    hosts: dict[str, str] | None = None  # per_node: data node -> the node hosting its replica instead


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
    # FPL presets: data node -> its own cut (0..plan's cut); its trunk's host computes the rest of its front
    device_cuts: dict[str, int] | None = None
