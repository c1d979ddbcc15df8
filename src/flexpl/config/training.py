"""Scenario schema, ``training:``: rounds, sampling, the optimizer and the aggregator.

Part of the scenario schema, :mod:`flexpl.config.scenario`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from flexpl.config.base import _Strict


class OptimizerCfg(_Strict):
    """Optimizer of every replica: SGD (with momentum) or Adam."""

    name: Literal["sgd", "adam"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)  # L2 penalty, SGD and Adam alike (torch.optim's weight_decay)
    reset_on_sync: bool = True  # a replica that receives averaged weights starts a fresh optimizer (as Flower does)
    # learning rate per round (see flexpl.sim.replica.lr_at): constant; step: lr * gamma ** ((round-1) // step_every);
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
    """How FedAvg stages are aggregated (flexpl.models.aggregate): fedavg, fedprox (client proximal term), fedadam
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
        from flexpl.models.aggregate import check_aggregator_cfg

        check_aggregator_cfg(self)
        return self


class TrainingCfg(_Strict):
    """Rounds, local epochs, batch size, client sampling and optimizer."""

    rounds: PositiveInt = 5
    local_epochs: PositiveInt = 1
    batch_size: PositiveInt = 32
    clients_per_round: float = Field(1.0, gt=0.0, le=1.0)
    max_steps_per_round: PositiveInt | None = None  # cap on local steps per node per round (quick runs)
    # fixed: every data node splits its samples into batches of batch_size (a node with more data takes more
    # steps); equal_steps: every data node takes (about) the same number of steps per epoch,
    # S = ceil(mean samples per data node / batch_size), in batches of ceil(its samples / S) (flexpl.data.batching;
    # a node with the mean's samples keeps batch_size), so that a stage shared in lockstep (an FPL trunk) meets
    # every node's data at every step, not only the largest nodes' in the last steps of a round
    batching: Literal["fixed", "equal_steps"] = "fixed"
    eval_every: PositiveInt = 1
    checkpoint_every: NonNegativeInt = 1  # save the run state every k rounds (0: never)
    eval_test: bool = True  # evaluate on the test set (flexpl tune turns it off: it chooses on validation data)
    optimizer: OptimizerCfg = Field(default_factory=OptimizerCfg)
    # the training loss: a name (flexpl.models.aggregate.LOSSES, or register_loss) or an import path "module:function"
    # taking (logits, labels) and returning the batch mean; billed in FLOPs like cross-entropy
    loss: str = "cross_entropy"
    # the compute's precision: bf16 runs each stage's forward under torch.autocast (flexpl.sim.device); weights,
    # optimizer state and what crosses a link stay fp32, so the bill is fp32's
    precision: Literal["fp32", "bf16"] = "fp32"
    aggregator: AggregatorCfg = Field(default_factory=lambda: AggregatorCfg())

    @field_validator("loss")
    @classmethod
    def _check_loss(cls, v: str) -> str:
        from flexpl.io.user_code import check_import_path, is_import_path, user_code_checked
        from flexpl.models.aggregate import resolve_loss

        if is_import_path(v) and not user_code_checked():  # reading finished results: spelling only
            check_import_path(v, "training.loss")
            return v
        resolve_loss(v)  # a one-line UserError naming training.loss
        return v
