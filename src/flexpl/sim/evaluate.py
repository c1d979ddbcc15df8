"""Evaluation of a run's paths (what a test sample meets on each data node's path), and the patch
helpers of the features junction. :class:`Evaluation` holds the ``Engine``'s operations; the Engine
mixes it in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from flexpl.errors import UserError
from flexpl.sim.device import channels_last, compute, eval_channels_last, to_device

# test samples per evaluation batch (see [Note: shared evaluation] and benchmarks/eval_chunk.py)
EVAL_CHUNK = 256


def merged_figures(per_node: Mapping[str, tuple[float, float]], node_weights: Mapping[str, float],
                   ensemble: torch.Tensor, y: torch.Tensor, paths: int) -> dict[str, Any]:
    """The evaluation's figures from each node's path (accuracy, loss) and the nodes' mean logits ``ensemble``:
    the weighted mean accuracy and loss, the worst path, the ensemble's accuracy on ``y``, the distinct paths
    (``Engine.evaluate``; ``RayPool.evaluate`` merges the actors' shares with it)."""
    total = sum(node_weights.values())
    return {
        "accuracy": sum(per_node[n][0] * w for n, w in node_weights.items()) / total,
        "loss": sum(per_node[n][1] * w for n, w in node_weights.items()) / total,
        "accuracy_min": min(per_node[n][0] for n in node_weights),
        "accuracy_ensemble": float((ensemble.argmax(1) == y).float().mean()),
        "paths": paths,
    }


class Evaluation:
    """Test accuracy and loss per path, worst path and ensemble (``self`` is the Engine)."""

    eval_memory_format: str = "auto"  # engine.eval_memory_format (set by flexpl.sim.simulator.setup)

    def eval_module(self, s: int, ridx: int) -> nn.Module:
        """The weights a test sample meets at stage ``s`` on replica ``ridx``'s path."""
        st = self.plan.stages[s]
        if self.layout.grouped(s):
            return self.group_global[(s, self.layout.agg_of[s][ridx])]
        if st.sync.kind == "fedavg":
            return self.global_[s]
        if st.sync.kind == "relay" and self.relay_holder is not None:
            return self.replicas[s][self.layout.serves[s][self.relay_holder]].module
        return self.replicas[s][ridx].module

    def path_key(self, s: int, ridx: int) -> tuple[Any, ...]:
        """What :meth:`eval_module` returns at stage ``s`` for replica ``ridx``, named the same in every process
        set up from the scenario (a Ray actor's paths are merged by it: ``RayPool.evaluate``)."""
        st = self.plan.stages[s]
        if self.layout.grouped(s):
            return ("group", s, self.layout.agg_of[s][ridx])
        if st.sync.kind == "fedavg":
            return ("global", s)
        if st.sync.kind == "relay" and self.relay_holder is not None:
            return ("relay", s)
        return ("replica", s, ridx)

    def shared_path(self) -> tuple[nn.Module, ...] | None:
        """The modules every data node's path meets, when they are the same for all (every stage averaged by
        FedAvg at one aggregator: each meets the global copies); None otherwise. Saves a pass over 10,000 nodes."""
        if self.features or not all(st.sync.kind == "fedavg" and not self.layout.grouped(s)
                                    for s, st in enumerate(self.plan.stages)):
            return None
        return tuple(self.eval_module(s, 0) for s in range(len(self.plan.stages)))

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, node_weights: dict[str, float],
                 chunk: int = EVAL_CHUNK, part: bool = False) -> dict[str, Any]:
        """Test accuracy and loss of every data node's path; weighted mean, worst path and ensemble.

        Modules run in eval mode (batch norm uses its running statistics and does not update
        them on test data; dropout is off) and go back to training mode afterwards. ``part``: the
        per-node figures of these nodes instead, for a Ray actor evaluating its share of the paths
        (:meth:`_evaluate_part`).
        """
        run = self._evaluate_part if part else self._evaluate
        # the modules a test sample can meet, each once (many replicas share one: a global copy, a working model)
        shared = self.shared_path()
        mods = list({id(m): m for m in shared}.values()) if shared is not None else \
            list({id(m): m for s, reps in enumerate(self.layout.replicas)
                  for m in (self.eval_module(s, ridx) for ridx in range(len(reps)))}.values())
        modes = [m.training for m in mods]
        for m in mods:
            m.eval()
        try:
            spec = self.eval_memory_format
            if len(x.shape) == 4 and eval_channels_last(spec, getattr(self, "device", torch.device("cpu"))):
                try:
                    with channels_last(mods) as on:
                        return run(x, y, node_weights, chunk, on)
                except RuntimeError as exc:
                    if "view" not in str(exc):
                        raise
                    if spec == "channels_last":
                        raise UserError("engine.eval_memory_format: the model reshapes an activation with .view(), "
                                        "which channels-last memory format does not allow; use .reshape() or "
                                        "engine.eval_memory_format=contiguous") from None
                    self.eval_memory_format = "contiguous"  # auto: this model evaluates contiguous from now on
            return run(x, y, node_weights, chunk)
        finally:
            for m, mode in zip(mods, modes):
                m.train(mode)

    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, node_weights: dict[str, float],
                  chunk: int, cl: bool = False) -> dict[str, float]:
        nodes = list(node_weights)
        shared = self.shared_path()
        if self.features:
            paths = {"joint": None}
            node_path = dict.fromkeys(nodes, "joint")
        elif shared is not None and nodes:  # one path for all: as _node_paths finds it
            key = tuple(id(m) for m in shared)
            paths, node_path = {key: shared}, dict.fromkeys(nodes, key)
        else:
            paths, node_path = self._node_paths(nodes, named=False)
        y = to_device(y, getattr(self, "device", torch.device("cpu")))
        logits = self._path_logits(paths, x, chunk, cl)
        acc, loss = self._path_metrics(logits, y)
        if len(paths) == 1:  # every node on one path: the same mean over a broadcast view, not N copies
            only = next(iter(logits.values()))
            ens = only.expand((len(nodes),) + tuple(only.shape)).mean(0)
        else:
            ens = torch.stack([logits[node_path[n]] for n in nodes]).mean(0)
        return merged_figures({n: (acc[node_path[n]], loss[node_path[n]]) for n in nodes}, node_weights, ens, y,
                              len(paths))

    def _node_paths(self, nodes: list[str], named: bool) -> tuple[dict[tuple[Any, ...], tuple[nn.Module, ...]],
                                                                    dict[str, tuple[Any, ...]]]:
        """The distinct paths of ``nodes`` (their modules, stage by stage) and each node's path key: the modules'
        ids, or with ``named`` their :meth:`path_key` names (the same in every process). A stage without blocks
        (an empty front, cut 0) is the identity: left out."""
        layout = self.layout
        paths: dict[tuple[Any, ...], tuple[nn.Module, ...]] = {}
        node_path: dict[str, tuple[Any, ...]] = {}
        for n in nodes:
            mods, key = [], []
            for s in range(len(self.plan.stages)):
                m = self.eval_module(s, layout.serves[s][n])
                if not is_identity(m):
                    mods.append(m)
                    key.append(self.path_key(s, layout.serves[s][n]) if named else id(m))
            paths.setdefault(tuple(key), tuple(mods))
            node_path[n] = tuple(key)
        return paths, node_path

    def _path_metrics(self, logits: dict[Any, torch.Tensor], y: torch.Tensor
                      ) -> tuple[dict[Any, float], dict[Any, float]]:
        """Each path's accuracy and loss on the labels ``y``."""
        return ({k: float((v.argmax(1) == y).float().mean()) for k, v in logits.items()},
                {k: float(self.loss_fn(v, y)) for k, v in logits.items()})

    def _path_logits(self, paths: dict[Any, Any], x: torch.Tensor, chunk: int, cl: bool) -> dict[Any, torch.Tensor]:
        """Every path's logits (fp32) on the whole of ``x``, chunk by chunk, each chunk moved to the device once."""
        dev, precision = getattr(self, "device", torch.device("cpu")), getattr(self, "precision", "fp32")
        logits: dict[Any, list[torch.Tensor]] = {k: [] for k in paths}
        with torch.inference_mode(), compute(dev, precision):
            for i in range(0, x.shape[0], chunk):
                xb = to_device(x[i:i + chunk], dev)  # each test batch moved once, shared by every path
                if cl:  # the weights are channels-last too (Evaluation.evaluate)
                    xb = xb.contiguous(memory_format=torch.channels_last)
                if self.features:
                    logits["joint"].append(self._forward_features(xb))
                    continue
                for k, out in forward_paths(paths, xb).items():
                    logits[k].append(out)
        return {k: torch.cat(v).float() for k, v in logits.items()}

    def _evaluate_part(self, x: torch.Tensor, y: torch.Tensor, node_weights: dict[str, float],
                       chunk: int, cl: bool = False) -> dict[str, Any]:
        """A share of the data nodes evaluated (a Ray actor's: ``RayPool.evaluate`` merges the shares):
        ``nodes`` maps each to its path's (accuracy, loss), ``paths`` names the distinct paths
        (:meth:`path_key`), ``logits_sum`` is the sum over these nodes of their paths' logits (on the CPU)."""
        paths, node_path = self._node_paths(list(node_weights), named=True)  # as _evaluate, keyed by name
        y = to_device(y, getattr(self, "device", torch.device("cpu")))
        logits = self._path_logits(paths, x, chunk, cl)
        acc, loss = self._path_metrics(logits, y)
        return {"nodes": {n: (acc[node_path[n]], loss[node_path[n]]) for n in node_weights}, "paths": list(paths),
                "logits_sum": torch.stack([logits[node_path[n]] for n in node_weights]).sum(0).cpu()}

    def _forward_features(self, x: torch.Tensor) -> torch.Tensor:
        j = self.junction_stage or 1
        nodes = list(self.layout.serves[0])
        feats = []
        for i, n in enumerate(nodes):
            h = extract_patch(x, self.patch_grid or (1, 1), i)
            for s in range(j):
                h = self.eval_module(s, self.layout.serves[s][n])(h)
            feats.append(h)
        h = torch.cat(feats, 1)
        for s in range(j, len(self.plan.stages)):
            h = self.eval_module(s, 0)(h)
        return h


def is_identity(module: nn.Module) -> bool:
    """A stage module without blocks (e.g. a device's front at cut 0): what it returns is its input."""
    from flexpl.models import BlockModel

    return isinstance(module, BlockModel) and len(module.blocks) == 0


def forward_paths(paths: dict[Any, tuple[nn.Module, ...]], x: torch.Tensor) -> dict[Any, torch.Tensor]:
    """Every path's output on the test batch ``x``, stage by stage, sharing what paths share.

    [Note: shared evaluation] Paths that meet the same modules up to a stage share that
    prefix's activation (computed once); paths whose prefixes differ but that meet the same
    module at a stage (an FPL group's trunk behind its devices' fronts) run it once on their
    inputs stacked along the batch. In eval mode every sample is computed on its own (batch
    norm uses its running statistics), so each path's output is what running it alone gives.
    Paths may have different lengths (identity stages left out): a shorter one is done early.
    """
    acts: dict[tuple[int, ...], torch.Tensor] = {(): x}
    n_stages = max(len(m) for m in paths.values())
    for s in range(n_stages):
        groups: dict[int, tuple[nn.Module, list[tuple[int, ...]]]] = {}
        done: set[tuple[int, ...]] = set()
        nxt_acts: dict[tuple[int, ...], torch.Tensor] = {}
        for mods in paths.values():
            prefix = tuple(id(m) for m in mods[:s])
            if s >= len(mods):  # this path ended at an earlier stage: its output carries on
                nxt_acts[prefix] = acts[prefix]
                continue
            nxt = prefix + (id(mods[s]),)
            if nxt in done:
                continue
            done.add(nxt)
            groups.setdefault(id(mods[s]), (mods[s], []))[1].append(prefix)
        for mid, (module, prefixes) in groups.items():
            if len(prefixes) == 1:
                outs = [module(acts[prefixes[0]])]
            else:  # one call on the stacked inputs, split back
                ins = [acts[p] for p in prefixes]
                outs = list(module(torch.cat(ins, 0)).split([t.shape[0] for t in ins], 0))
            for p, o in zip(prefixes, outs):
                nxt_acts[p + (mid,)] = o
        acts = nxt_acts
    return {k: acts[tuple(id(m) for m in mods)] for k, mods in paths.items()}


def patch_grid(n: int, h: int, w: int) -> tuple[int, int] | None:
    """Split an ``h x w`` image into ``n`` equal patches: (rows, cols) closest to square, or None."""
    best = None
    for rows in range(1, n + 1):
        if n % rows:
            continue
        cols = n // rows
        if h % rows or w % cols:
            continue
        score = abs(h // rows - w // cols)
        if best is None or score < best[0]:
            best = (score, rows, cols)
    return None if best is None else (best[1], best[2])


def patch_input(shape: tuple[int, ...], n: int) -> tuple[tuple[int, int], tuple[int, int, int]]:
    """A features junction's ``n`` patches of samples of ``shape`` [C, H, W]: the grid and one patch's shape.

    Raises a one-line ``UserError`` (naming ``plan.junction``) when the samples are not
    images or cannot be cut into ``n`` equal patches.
    """
    if len(shape) != 3:  # e.g. a registered dataset of feature vectors
        raise UserError(f"plan.junction: a features junction cuts images [C, H, W] into patches; "
                        f"samples here have shape {tuple(shape)}")
    _, h, w = shape
    grid = patch_grid(n, h, w)
    if grid is None:
        raise UserError(f"plan.junction: cannot cut {h}x{w} images into {n} equal patches; "
                        "use a number of data nodes that divides the image")
    return grid, (shape[0], h // grid[0], w // grid[1])


def extract_patch(x: torch.Tensor, grid: tuple[int, int], i: int) -> torch.Tensor:
    """Patch ``i`` (row-major) of images ``x`` [N, C, H, W] cut into a ``grid`` of equal patches."""
    rows, cols = grid
    ph, pw = x.shape[-2] // rows, x.shape[-1] // cols
    r, c = divmod(i, cols)
    return x[..., r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
