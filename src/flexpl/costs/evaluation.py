"""FLOPs of a test-set evaluation, per node that runs it (billed apart from training).

The evaluation of :meth:`flexpl.sim.engine.Engine.evaluate` runs every distinct path
(front i + shared trunk) over the whole test set: each stage's forward pass, and the
cross-entropy loss after the last. A stage is billed to the node that holds the weights
the test sample meets there: the aggregator of a FedAvg stage, the relay holder's host
of a relayed stage, the replica's host otherwise. The test set is taken to be where it
is needed: no bytes are billed for it, and evaluation takes no time on the virtual clock.
Accuracy (argmax, compare) and the ensemble's logit mean are not counted.
"""

from __future__ import annotations

from typing import Any

import torch

from flexpl.costs.flops import flop_counter, loss_on_meta


def forward_flops(cache: dict[tuple, tuple[int, tuple[int, ...]]], s: int, module: torch.nn.Module,
                  shape: tuple[int, ...], loss: bool, loss_fn: Any = None) -> tuple[int, tuple[int, ...]]:
    """FLOPs of one forward pass of stage ``s`` (and the loss when ``loss``) on ``shape``, and the output shape."""
    key = (s, shape, loss)
    hit = cache.get(key)
    if hit is None:
        import copy

        meta = copy.deepcopy(module).to("meta")
        with torch.no_grad(), flop_counter() as counter:
            out = meta(torch.empty(shape, device="meta"))
            out_shape = tuple(out.shape)
            if loss:  # training.loss (cross-entropy by default)
                loss_on_meta(loss_fn or True, out)
        hit = cache[key] = (int(counter.get_total_flops()), out_shape)
    return hit


def eval_flops(eng: Any, n_test: int, sample_shape: tuple[int, ...], nodes: list[str],
               cache: dict[tuple, tuple[int, tuple[int, ...]]]) -> dict[str, int]:
    """FLOPs per node of one evaluation of ``eng``'s model on ``n_test`` samples (see the module docstring)."""
    layout, stages = eng.layout, eng.plan.stages
    last = len(stages) - 1
    out: dict[str, int] = {}

    def host(s: int, ridx: int) -> str:
        st = stages[s]
        if layout.grouped(s):  # fronts averaged per group: the group's average lives at its head
            return layout.agg_of[s][ridx]
        if st.sync.kind == "fedavg":
            return layout.aggregators[s]
        if st.sync.kind == "relay" and eng.relay_holder is not None:
            return eng.replicas[s][layout.serves[s][eng.relay_holder]].host
        return eng.replicas[s][ridx].host

    def run(s: int, ridx: int, shape: tuple[int, ...]) -> tuple[int, ...]:
        f, nxt = forward_flops(cache, s, eng.eval_module(s, ridx), shape, s == last, eng.flops.loss_fn)
        h = host(s, ridx)
        out[h] = out.get(h, 0) + f
        return nxt

    if eng.features:  # every branch on its patch, joined along the features, then the trunk
        j = eng.junction_stage or 1
        grid = eng.patch_grid or (1, 1)
        c, h, w = sample_shape
        feats = []
        for n in list(layout.serves[0]):
            shape: tuple[int, ...] = (n_test, c, h // grid[0], w // grid[1])
            for s in range(j):
                shape = run(s, layout.serves[s][n], shape)
            feats.append(shape)
        shape = (n_test, sum(f[1] for f in feats), *feats[0][2:])
        for s in range(j, len(stages)):
            shape = run(s, 0, shape)
        return out
    seen = set()
    # one path for all (flexpl.sim.evaluate.Evaluation.shared_path): the first node's is every node's
    for n in nodes[:1] if nodes and eng.shared_path() is not None else nodes:
        key = tuple(id(eng.eval_module(s, layout.serves[s][n])) for s in range(len(stages)))
        if key in seen:
            continue
        seen.add(key)
        shape = (n_test, *sample_shape)
        for s in range(len(stages)):
            shape = run(s, layout.serves[s][n], shape)
    return out
