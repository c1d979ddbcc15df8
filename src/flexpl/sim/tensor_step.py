"""The tensor half of a training step: the ``Engine``'s runner of ``flexpl.plan.step.train_step``.

The walker (``flexpl.plan.step``) groups streams at junctions, moves values through the
transport, records every forward and backward; these hooks do the arithmetic on tensors:
one replica after another (sequential), or replicas of a stage run ahead side by side
(``vector_chunk``: ``vmap``; ``remote``: worker processes, ``flexpl.sim.exec.processes.StepPool``),
whose outputs the walker then records replica by replica as if run one by one.
Replicas on the meta device (``ReplicaState.shape_only``) run on shapes only.

[Note: stage boundaries] Each stage's input is detached and made a leaf, so a stage's
backward stops at its input and the input's gradient is what travels back to the
previous stage, exactly as it would over a network.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from flexpl.plan.step import StepRecord
from flexpl.plan.step import train_step as walk_step
from flexpl.sim.device import compute

if TYPE_CHECKING:
    from flexpl.costs.trace import Event
    from flexpl.sim.state import ReplicaState, VecChunk


class TensorStep:
    """``Engine`` mixin: ``train_step`` and the step runner's hooks (see ``flexpl.plan.step.StepRunner``)."""

    _batch: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    step_arithmetic = True  # (flexpl.plan.step.StepRunner)
    step_nbytes = None  # (values are moved by step_move, through the transport)

    def train_step(self, batch: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int]:
        """One training step for the data nodes in ``batch`` (node -> (x, y)), through every stage.

        Streams that meet at a replica are joined (batch: stacked; features: concatenated
        on dimension 1), run once, and the input gradient is split back. Returns the summed
        training loss and the number of samples.
        """
        self._batch = batch
        try:
            loss_sum, n_samples, saved = walk_step(self, list(batch))
        finally:
            self._batch = {}
        if not math.isfinite(loss_sum):  # where it started: the first stage whose output is not finite
            self.bad_stage = next((s for s in range(len(saved)) for rec in saved[s]
                                   if not rec.out.is_meta and not bool(torch.isfinite(rec.out.detach()).all())),
                                  len(saved) - 1)
        return loss_sum, n_samples

    # ------------------------------------------------------------ forward

    def step_streams(self, nodes: list[str]) -> list[torch.Tensor]:
        """Each node's input batch."""
        return [self._batch[n][0] for n in nodes]

    def step_labels(self, nodes: list[str]) -> list[torch.Tensor]:
        """Each node's labels."""
        return [self._batch[n][1] for n in nodes]

    def step_move(self, value: torch.Tensor, src: str, dst: str, kind: str, deps: list, label: str
                  ) -> tuple[torch.Tensor, Event]:
        """Through the transport (which records the transfer)."""
        return self.transport.move(value, src, dst, kind, deps, label)

    def step_pre(self, s: int, groups: dict[int, list[str]], carry: dict[str, tuple], last: bool
                 ) -> dict[int, tuple[VecChunk, int]]:
        """Stage ``s``'s one-stream replicas run side by side: in worker processes or vmapped."""
        if self.remote is not None:
            return self.remote.forward(self, s, groups, carry, self._batch, last)
        if self.vector_chunk:
            return self._vector_forward(s, groups, carry)
        return {}

    def step_forward(self, s: int, ridx: int, rep: ReplicaState, parts: list[torch.Tensor], dim: int,
                     pre: tuple[VecChunk, int] | None) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Replica ``rep`` on its joined input (or what it ran ahead on); its FLOPs."""
        if s in self.working and not rep.shape_only:  # [Note: working models]
            self._bind(s, rep)
        if pre is not None:  # already run, stacked with its peers (same arithmetic per replica)
            chunk, i = pre
            inp, out = chunk.ins[i], chunk.outs[i]
        else:
            inp = parts[0] if len(parts) == 1 else torch.cat(parts, dim)
            inp = inp.detach().requires_grad_(self.input_grad[s])  # [Note: stage boundaries]
            if rep.shape_only:
                out = self._shape_out(s, rep.module, inp)
            elif self.precision == "fp32":
                out = rep.module(inp)
            else:  # the compute in bf16; what leaves the stage is fp32, as it is billed and sent
                with compute(self.device, self.precision):
                    out = rep.module(inp)
                if out.is_floating_point() and out.dtype != torch.float32:
                    out = out.float()
        f_fwd, f_bwd = self.flops.get(s, rep.module, tuple(inp.shape), self.input_grad[s],
                                      s == len(self.replicas) - 1)
        return inp, out, f_fwd, f_bwd

    def step_sizes(self, parts: list[torch.Tensor], dim: int) -> list[int]:
        """Each part's extent along ``dim``."""
        return [p.shape[dim] for p in parts]

    def step_split(self, out: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        """``out`` split on dimension 0."""
        return list(out.split(sizes, 0))

    # ------------------------------------------------------------ backward

    def step_backprop(self, s: int, recs: list[StepRecord]) -> list[bool]:
        """Whether a gradient flows into each output (chunks only hold stages with weights)."""
        return [rec.vec is not None or rec.out.requires_grad for rec in recs]

    def step_backward(self, s: int, rec: StepRecord, grads: list[torch.Tensor] | None,
                      pending: dict[str, tuple[torch.Tensor, str, Event]]) -> tuple[float, int]:
        """Loss (last stage), backward pass and optimizer step of one replica (a chunk's all at once)."""
        rep = rec.rep
        chunk = rec.vec[0] if rec.vec else None
        if chunk is not None and not chunk.done:
            if chunk.remote is not None:
                chunk.remote.backward(self, chunk, pending)
            else:
                self._vector_backward(chunk, len(self.replicas) - 1, pending, self._batch)
        loss_sum, n_samples = 0.0, 0
        if grads is None:
            ys = [y for y, _ in rec.labels]
            y = ys[0] if len(ys) == 1 else torch.cat(ys, 0)
            if chunk is not None:
                loss = chunk.losses[rec.vec[1]]
            elif rep.shape_only:  # nothing to compute, nothing to count
                loss = rec.out
            else:
                loss = self.loss_fn(rec.out, y)
                loss.backward()
            if not loss.is_meta:
                loss_sum, n_samples = float(loss.detach()) * int(y.shape[0]), int(y.shape[0])
        elif chunk is None and not rep.shape_only:
            rec.out.backward(grads[0] if len(grads) == 1 else torch.cat(grads, 0))
        if rep.opt is not None and not rep.shape_only and not (chunk is not None and chunk.stepped):
            self.opt_step(rep)
        return loss_sum, n_samples

    def step_input_grads(self, s: int, recs: list[StepRecord]) -> list[list[torch.Tensor] | None]:
        """Each input's gradient per member (a chunk's row, or split back); None where the input needs none."""
        return [self._input_grad(rec) for rec in recs]

    @staticmethod
    def _input_grad(rec: StepRecord) -> list[torch.Tensor] | None:
        chunk = rec.vec[0] if rec.vec else None
        if chunk is not None:
            return None if chunk.in_grads is None else [chunk.in_grads[rec.vec[1]]] * len(rec.members)
        if not rec.inp.requires_grad:
            return None
        gi = torch.empty(rec.inp.shape, dtype=rec.inp.dtype, device="meta") if rec.rep.shape_only \
            else rec.inp.grad
        return [gi] if len(rec.members) == 1 else list(gi.split(rec.sizes, rec.dim))

    # where and in which precision replicas compute (flexpl.sim.device; set by the simulator's setup)
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    # (provided by Engine)
    transport: Any
    remote: Any
    vector_chunk: int | None
    working: dict
    input_grad: list[bool]
    flops: Any
    replicas: list
    loss_fn: Any
    bad_stage: int | None
