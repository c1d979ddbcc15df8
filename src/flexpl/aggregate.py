"""Aggregation rules as pure functions on state dicts.

FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017 -- the sample-weighted mean of the replicas' weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

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
