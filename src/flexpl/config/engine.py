"""Scenario schema, ``engine:``, ``energy:``, ``costs:``, ``evaluation:`` and ``failures:``.

Part of the scenario schema, :mod:`flexpl.config.scenario`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from flexpl.config.base import _Strict

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")  # (as flexpl.sim.device.DEVICE_PATTERN)
_RAY_ADDRESS = re.compile(r"^(auto|ray://\S+|[A-Za-z0-9._-]+:\d+)$")  # (as flexpl.io.ray_cluster.ADDRESS)


class EnergyCfg(_Strict):
    """Energy accounting options."""

    include_idle: bool = False  # add idle power x idle time of every node to energy_j_total


class CostsCfg(_Strict):
    """What the cost totals include."""

    include_eval: bool = False  # add evaluation FLOPs and energy (eval_flops, eval_energy_j) to the totals


class EvaluationCfg(_Strict):
    """Accuracy targets: the cost to reach each one is reported (see flexpl.costs.targets)."""

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
    # simulator: how replicas run (see flexpl.sim.exec.policy); auto picks per plan and model
    executor: Literal["auto", "sequential", "processes", "vectorized", "ray"] = "auto"
    # processes: worker count (default: CPU cores, at most one per data node); ray: Ray actors
    # (default: as many as the cluster's CPUs, or GPUs / gpus_per_worker, hold; at most one per data node)
    workers: PositiveInt | None = None
    vector_chunk: PositiveInt = 32  # vectorized: replicas trained together in one vmapped call (or working-model clients per stacked arena)
    # simulator: where replicas, working models, evaluation and aggregation run (flexpl.sim.device);
    # auto: CUDA when there is one, else the CPU. The bill does not depend on it.
    device: str = "auto"
    # evaluation's memory format (flexpl.sim.device.eval_channels_last): auto is channels-last for
    # convolutional paths on the CPU (benchmarks/channels_last.py: the CNN's evaluation 1.75x, ResNet-18's
    # 1.24x on an idle AVX2 2-core machine), else contiguous.
    eval_memory_format: Literal["auto", "contiguous", "channels_last"] = "auto"
    # training's memory format (flexpl.sim.device.train_channels_last): channels_last keeps every
    # convolution weight (replicas, arena rows, working models, global copies) in channels-last, so the
    # convolutions run channels-last; weights agree with contiguous to float round-off, the bill is the
    # same. Opt-in: a training step measured 1.12x (the CNN), 1.28x (LeNet-5), 1.02x (ResNet-18); edge-fmnist's
    # fl and fpl rounds (12k samples, processes) 1.12x each (benchmarks/channels_last.py --runs, load ~1.5).
    train_memory_format: Literal["contiguous", "channels_last"] = "contiguous"
    # ray (flexpl.sim.exec.ray_pool): the cluster to join (auto, HOST:PORT or ray://HOST:PORT);
    # None: a local Ray started for the run and stopped after it
    ray_address: str | None = None
    # ray: the GPU share each Ray actor asks for (fractional allowed, e.g. 0.25); 0: CPU actors
    gpus_per_worker: float = Field(0.0, ge=0.0)

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if not _DEVICE.match(v):
            raise ValueError(f"engine.device: '{v}' is not a device; use auto, cpu, cuda or cuda:N")
        return v

    @field_validator("ray_address")
    @classmethod
    def _check_ray_address(cls, v: str | None) -> str | None:
        if v is not None and not _RAY_ADDRESS.match(v):
            raise ValueError(f"engine.ray_address: '{v}' is not a Ray address; use auto, HOST:PORT or ray://HOST:PORT")
        return v


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
