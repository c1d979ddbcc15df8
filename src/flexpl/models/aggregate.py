"""Aggregation rules on state dicts, the aggregator interface, and the pluggable training loss.

FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017 -- the sample-weighted mean of the replicas' weights.
:class:`Aggregator` is the interface (FedAvg by default); :class:`FedProx` and
:class:`FedAdam` are short examples of extending it. :class:`Loss` is the training loss
(``training.loss``, cross-entropy by default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from flexpl.errors import UserError
from flexpl.io.user_code import check_import_path, import_object, is_import_path, user_code_checked

State = Mapping[str, torch.Tensor]


def fedavg(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of ``states`` with ``weights`` (normalised to sum to 1), key by key.

    Floating tensors are averaged in the order given; integer buffers (e.g. BatchNorm's
    ``num_batches_tracked``) take the weighted mean rounded to the nearest integer.
    A single state is returned as an exact copy.
    """
    if not states:
        raise ValueError("fedavg needs at least one state")
    if len(states) != len(weights):
        raise ValueError("fedavg needs one weight per state")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("fedavg weights must sum to a positive number")
    if len(states) == 1:
        return {k: v.detach().clone() for k, v in states[0].items()}
    coef = [w / total for w in weights]
    out: dict[str, torch.Tensor] = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            acc = first.detach() * coef[0]
            for st, c in zip(states[1:], coef[1:]):
                acc = acc + st[key].detach() * c
            out[key] = acc
        else:
            acc = sum(float(c) * st[key].double() for st, c in zip(states, coef))
            out[key] = torch.round(acc).to(first.dtype)
    return out


def fedavg_flops(n_states: int, float_elements: int) -> int:
    """FLOPs of :func:`fedavg` of ``n_states`` states of ``float_elements`` floats each.

    Each element: ``n`` multiplies by the normalised weights and ``n - 1`` adds; the ``n``
    weight divisions are per state, not per element, and are added once. A single state is
    copied: 0. Integer buffers are rounded means of a handful of counters: not counted.
    """
    if n_states <= 1:
        return 0
    return (2 * n_states - 1) * float_elements + n_states


# ---------------------------------------------------------------- aggregators
#
# [Note: aggregators] An aggregator turns the uploads of a FedAvg stage into the stage's new
# global weights at its aggregator node (``Engine.upload``), once per sync and per stage
# (``key`` names the stage, and the group head for per-group averaging, so a stateful rule
# keeps one state per averaged model). ``proximal`` > 0 asks the engine to add
# ``proximal * (w - w_global)`` to every FedAvg-synced replica's gradient before each local
# optimizer step, ``w_global`` being the weights the replica last downloaded (FedProx).


class Aggregator:
    """Server-side aggregation rule; the default is FedAvg. Subclass and override :meth:`aggregate`.

    Flower users know this as a ``Strategy``'s ``aggregate_fit``: here it works on one
    stage's state dict (the whole model for FL, a stage of it for split/parallel plans).
    """

    proximal: float = 0.0  # FedProx's mu: the client-side term the engine adds (0: none)

    def aggregate(self, global_state: State, states: Sequence[State], weights: Sequence[float],
                  key: str = "") -> dict[str, torch.Tensor]:
        """The new global state from the current one and the clients' ``states`` weighted by ``weights``."""
        return fedavg(states, weights)

    def flops(self, n_states: int, float_elements: int) -> int:
        """FLOPs of one :meth:`aggregate` (billed to the aggregator node)."""
        return fedavg_flops(n_states, float_elements)

    def state_dict(self) -> dict[str, Any]:
        """State kept across rounds (checkpointed with the engine)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class FedAvg(Aggregator):
    """McMahan et al. 2017: the sample-weighted mean of the clients' weights (bitwise :func:`fedavg`)."""


class FedProx(FedAvg):
    """Li et al., MLSys 2020: FedAvg on the server; clients minimise ``f(w) + mu/2 ||w - w_global||^2``.

    The engine adds the term's gradient ``mu * (w - w_global)`` to every local gradient of a
    FedAvg-synced stage (:func:`proximal_grad`), 3 FLOPs per parameter per step, billed.
    """

    def __init__(self, mu: float = 0.01) -> None:
        self.proximal = float(mu)


def proximal_grad(params: Iterable[tuple[str, torch.Tensor]], anchor: State, mu: float) -> None:
    """FedProx's client step: ``p.grad += mu * (p - anchor[name])`` for every parameter with a gradient."""
    for name, p in params:
        if p.grad is not None and name in anchor:
            p.grad.add_(p.detach() - anchor[name], alpha=mu)


class FedAdam(Aggregator):
    """Reddi et al., ICLR 2021 (Adaptive Federated Optimization), FedAdam without bias correction.

    ``delta = fedavg(states) - x``; ``m = b1 m + (1 - b1) delta``; ``v = b2 v + (1 - b2) delta^2``;
    ``x += eta * m / (sqrt(v) + tau)``. ``m`` and ``v`` start at 0 and persist across rounds
    (one pair per averaged model). Integer buffers take FedAvg's value. Defaults as Flower's FedAdam.
    """

    def __init__(self, eta: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-9) -> None:
        self.eta, self.beta1, self.beta2, self.tau = float(eta), float(beta1), float(beta2), float(tau)
        self.m: dict[str, dict[str, torch.Tensor]] = {}
        self.v: dict[str, dict[str, torch.Tensor]] = {}

    def aggregate(self, global_state: State, states: Sequence[State], weights: Sequence[float],
                  key: str = "") -> dict[str, torch.Tensor]:
        avg = fedavg(states, weights)
        m, v = self.m.setdefault(key, {}), self.v.setdefault(key, {})
        out: dict[str, torch.Tensor] = {}
        for k, x in global_state.items():
            if not x.is_floating_point():
                out[k] = avg[k]
                continue
            delta = avg[k] - x.detach()
            m[k] = self.beta1 * m[k] + (1 - self.beta1) * delta if k in m else (1 - self.beta1) * delta
            v[k] = self.beta2 * v[k] + (1 - self.beta2) * delta * delta if k in v else (1 - self.beta2) * delta * delta
            out[k] = x.detach() + self.eta * m[k] / (v[k].sqrt() + self.tau)
        return out

    def flops(self, n_states: int, float_elements: int) -> int:
        """FedAvg's, plus per element: delta 1, m 3, v 4, sqrt + add + div + mul + add 5."""
        return super().flops(n_states, float_elements) + 13 * float_elements

    def state_dict(self) -> dict[str, Any]:
        return {"m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m = {k: dict(d) for k, d in state.get("m", {}).items()}
        self.v = {k: dict(d) for k, d in state.get("v", {}).items()}


AGGREGATORS: dict[str, Callable[..., Aggregator]] = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam}
_AGG_FIELDS = {"fedavg": (), "fedprox": ("mu",), "fedadam": ("eta", "beta1", "beta2", "tau")}


def register_aggregator(name: str, factory: Callable[..., Aggregator]) -> None:
    """Make ``factory(**training.aggregator.options)`` the aggregator ``training.aggregator.kind: NAME``."""
    if not isinstance(name, str) or not name or ":" in name or name in _AGG_FIELDS:
        raise UserError(f"register_aggregator: name must be a new name without ':', got {name!r}")
    AGGREGATORS[name] = factory


def check_aggregator_cfg(cfg: Any) -> None:
    """Raise ``ValueError`` naming the field when ``training.aggregator`` is inconsistent."""
    given = [f for f in ("mu", "eta", "beta1", "beta2", "tau") if getattr(cfg, f) is not None]
    if cfg.kind in _AGG_FIELDS:
        wrong = [f for f in given if f not in _AGG_FIELDS[cfg.kind]]
        if wrong:
            owner = next(k for k, v in _AGG_FIELDS.items() if wrong[0] in v)
            raise ValueError(f"training.aggregator.{wrong[0]}: only kind {owner} takes {wrong[0]}; "
                             f"remove it for {cfg.kind}")
        if cfg.options:
            raise ValueError(f"training.aggregator.options: only a custom aggregator takes options; "
                             f"remove them for {cfg.kind}")
        return
    if given:
        raise ValueError(f"training.aggregator.{given[0]}: a custom aggregator takes its arguments "
                         "in training.aggregator.options")
    if cfg.kind in AGGREGATORS:
        return

    if not is_import_path(cfg.kind):
        raise ValueError(f"training.aggregator.kind: unknown aggregator {cfg.kind!r}; allowed: "
                         f"{', '.join(AGGREGATORS)} or an import path 'module:Class'")
    check_import_path(cfg.kind, "training.aggregator.kind")
    if user_code_checked() and not callable(import_object(cfg.kind, "training.aggregator.kind")):
        raise ValueError(f"training.aggregator.kind: '{cfg.kind}' is not callable")


def make_aggregator(cfg: Any) -> Aggregator:
    """A fresh aggregator for one run from ``training.aggregator`` (a stateful one must not be shared)."""
    if cfg is None:
        return FedAvg()
    if cfg.kind in _AGG_FIELDS:
        kw = {f: getattr(cfg, f) for f in _AGG_FIELDS[cfg.kind] if getattr(cfg, f) is not None}
        return AGGREGATORS[cfg.kind](**kw)
    if cfg.kind in AGGREGATORS:
        factory = AGGREGATORS[cfg.kind]
    else:
        factory = import_object(cfg.kind, "training.aggregator.kind")
    try:
        agg = factory(**cfg.options)
    except TypeError as exc:
        raise UserError(f"training.aggregator.options: {exc}") from None
    if not hasattr(agg, "aggregate"):
        raise UserError(f"training.aggregator.kind: {cfg.kind} made a {type(agg).__name__}, which has no "
                        "aggregate(global_state, states, weights, key); subclass flexpl.Aggregator")
    return agg


# ---------------------------------------------------------------- losses


class Loss:
    """The training loss ``fn(logits, labels) -> batch mean``, as the engine calls it everywhere."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], name: str) -> None:
        self.fn, self.name = fn, name

    @property
    def default(self) -> bool:
        """True for cross-entropy, the loss every count and every code path was written for."""
        return self.fn is F.cross_entropy

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.fn(logits, labels)

    def per_replica(self, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each replica's mean loss from stacked outputs ``[k, B, ...]`` and labels ``[k, B]`` (vectorized engine)."""
        k, b = labels.shape[0], labels.shape[1]
        if self.default:  # one call for all replicas, as before losses were pluggable
            return F.cross_entropy(out.reshape(k * b, -1), labels.reshape(-1), reduction="none").view(k, b).mean(1)
        return torch.stack([self.fn(out[i], labels[i]) for i in range(k)])

    def __repr__(self) -> str:
        return f"Loss({self.name})"


def _nll_of_log_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(F.log_softmax(logits, dim=-1), labels)


def _mse_one_hot(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(logits, F.one_hot(labels, logits.shape[-1]).to(logits.dtype))


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": F.cross_entropy, "nll_log_softmax": _nll_of_log_softmax, "mse_one_hot": _mse_one_hot}


CROSS_ENTROPY = Loss(F.cross_entropy, "cross_entropy")


def register_loss(name: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Make ``fn(logits, labels) -> mean loss`` the loss ``training.loss: NAME`` (it must run on meta tensors)."""
    if not isinstance(name, str) or not name or ":" in name or name == "cross_entropy":
        raise UserError(f"register_loss: name must be a new name without ':', got {name!r}")
    LOSSES[name] = fn


def resolve_loss(spec: str | Callable[..., torch.Tensor] | None) -> Loss:
    """The :class:`Loss` that ``training.loss`` names (a name of :data:`LOSSES` or ``"module:function"``)."""
    if spec is None or spec == "cross_entropy":
        return CROSS_ENTROPY
    if callable(spec):
        return Loss(spec, getattr(spec, "__name__", "loss"))
    if spec in LOSSES:
        return Loss(LOSSES[spec], spec)

    if not is_import_path(spec):
        raise UserError(f"training.loss: unknown loss {spec!r}; allowed: {', '.join(LOSSES)} "
                        "(or register_loss, or an import path 'module:function')")
    fn = import_object(spec, "training.loss")
    if not callable(fn):
        raise UserError(f"training.loss: '{spec}' is not callable")
    return Loss(fn, spec)
