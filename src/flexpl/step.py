"""One training step, walked once for the engine and the planner: the choreography, not the arithmetic.

A step (the program's ``Step``, see ``flexpl.program``) pushes each data node's batch
through the stages: at every stage the streams that meet at one replica (``layout.serves``)
are joined (batch junction: stacked on dimension 0; feature junction: concatenated on
dimension 1 at the junction stage), moved to the replica's host, run forward; the labels
travel to the last stage; then the backward pass runs stage by stage in reverse, the output
gradients travel back, each replica steps its optimizer, and the input gradients are split
back per stream. Every crossing goes through the runner's ``step_move`` (which records the
transfer) and every forward and backward is recorded here, with the same dependencies and
labels, so the engine (tensors: ``flexpl.engine.tensor_step``) and the planner (shapes:
``flexpl.planner.walk.ShapeWalk``) record the same trace by construction.

The runner (:class:`StepRunner`) does the value-level work only: a stream's input and
labels, moving a value, running a stage, sizes and splits, the loss and backward pass, and
the input gradients. Values are tensors for the engine and ``(shape, element size)``
pairs for the planner (which allocates no tensor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class StepRecord:
    """What one replica's forward pass left for the backward pass."""

    __slots__ = ("rep", "inp", "out", "members", "out_keys", "sizes", "dim", "fwd_ev", "bwd_flops", "labels",
                 "vec", "stage", "index")

    def __init__(self, rep: Any, inp: Any, out: Any, members: list[str], out_keys: list[str], sizes: list[int] | None,
                 dim: int, fwd_ev: Any, bwd_flops: int, labels: list[tuple[Any, Any]] | None = None,
                 vec: Any = None, stage: int = 0, index: int = 0) -> None:
        self.rep = rep            # the replica (its ``host`` and ``last_update``)
        self.inp = inp            # the joined input it ran on
        self.out = out            # its output
        self.members = members    # the streams (data nodes) it joined, in order
        self.out_keys = out_keys  # the streams its output flows on as (one for a feature junction)
        self.sizes = sizes        # each member's extent along ``dim`` (None for a single member)
        self.dim = dim            # the dimension the members were joined on
        self.fwd_ev = fwd_ev
        self.bwd_flops = bwd_flops
        self.labels = [] if labels is None else labels  # last stage: (labels, arrival event) per output stream
        self.vec = vec            # runner-specific: what a pre-run gave for this replica (engine: (chunk, row))
        self.stage = stage
        self.index = index        # the replica's index in its stage


class StepRunner(Protocol):
    """The value-level half of a step; the walker (:func:`train_step`) does the rest.

    Attributes it reads: ``layout`` (``serves``), ``replicas[s][i]`` (``host``,
    ``last_update``), ``recorder`` (``compute``), ``stream_ready`` (node -> the event after
    which its stream's previous step is done), ``opt_flops`` (a replica's optimizer step,
    per stage), ``features`` (a feature junction) and ``junction_stage``.
    """

    layout: Any
    replicas: Any
    recorder: Any
    stream_ready: dict[str, Any]
    opt_flops: Sequence[int]
    features: bool
    junction_stage: int | None

    def step_stream(self, node: str) -> Any:
        """Node ``node``'s input batch (on the node)."""

    def step_labels(self, node: str) -> Any:
        """Node ``node``'s labels (on the node)."""

    def step_move(self, value: Any, src: str, dst: str, kind: str, deps: list, label: str) -> tuple[Any, Any]:
        """Move ``value`` from ``src`` to ``dst`` (recording the transfer); the value there and the arrival event."""

    def step_pre(self, s: int, groups: dict[int, list[str]], carry: dict[str, tuple], last: bool) -> dict[int, Any]:
        """Replicas of stage ``s`` run ahead, side by side (vectorized, worker processes): replica -> what
        :meth:`step_forward` gets as ``pre``. Not called at a feature junction."""

    def step_forward(self, s: int, ridx: int, rep: Any, parts: list[Any], dim: int, pre: Any
                     ) -> tuple[Any, Any, int, int]:
        """Run replica ``ridx`` of stage ``s`` on ``parts`` joined on ``dim``: (input, output, forward FLOPs,
        backward FLOPs)."""

    def step_sizes(self, parts: list[Any], dim: int) -> list[int]:
        """Each part's extent along ``dim``."""

    def step_split(self, out: Any, sizes: list[int]) -> list[Any]:
        """``out`` split along dimension 0 into pieces of ``sizes``."""

    def step_backprop(self, s: int, rec: StepRecord) -> bool:
        """Whether a gradient flows into the output of ``rec`` (a stage before the last)."""

    def step_backward(self, s: int, rec: StepRecord, grads: list[Any] | None, pending: dict[str, tuple]
                      ) -> tuple[float, int]:
        """Backward pass and optimizer step of ``rec`` (last stage: ``grads`` None, the loss first); the
        summed loss and samples it counts. ``pending``: the stage's gradients where they were sent from."""

    def step_input_grads(self, rec: StepRecord) -> list[Any] | None:
        """The gradient of ``rec``'s input, one piece per member; None if none flows back."""


def train_step(r: StepRunner, nodes: Sequence[str]) -> tuple[float, int, list[list[StepRecord]]]:
    """One training step of the streams of ``nodes`` on runner ``r``, through every stage and back.

    Returns the summed training loss, the number of samples and each stage's records.
    """
    ready = r.stream_ready
    carry: dict[str, tuple[Any, str, Any]] = {n: (r.step_stream(n), n, ready.get(n)) for n in nodes}
    saved: list[list[StepRecord]] = [[] for _ in r.replicas]
    last = len(saved) - 1
    for s in range(last + 1):
        carry = _forward(r, s, last, carry, saved[s])
    loss_sum, n_samples = 0.0, 0
    pending: dict[str, tuple[Any, str, Any]] = {}
    for s in range(last, -1, -1):
        pending, ls, ns = _backward(r, s, last, saved[s], pending)
        loss_sum += ls
        n_samples += ns
    return loss_sum, n_samples, saved


def _forward(r: StepRunner, s: int, last: int, carry: dict[str, tuple[Any, str, Any]],
             saved: list[StepRecord]) -> dict[str, tuple[Any, str, Any]]:
    """Stage ``s`` of the forward pass: join the streams at each replica, run it, record it in ``saved``;
    returns what flows on (node -> (output, where, event))."""
    serves = r.layout.serves[s]
    groups: dict[int, list[str]] = {}
    for m in carry:
        groups.setdefault(serves[m], []).append(m)
    join_features = r.features and s == r.junction_stage
    dim = 1 if join_features else 0
    pre = {} if join_features else r.step_pre(s, groups, carry, s == last)
    reps, move, compute, ready = r.replicas[s], r.step_move, r.recorder.compute, r.stream_ready
    kind = "input" if s == 0 else "activation"
    new_carry: dict[str, tuple[Any, str, Any]] = {}
    for ridx, members in groups.items():
        rep = reps[ridx]
        host = rep.host
        label = f"s{s}r{ridx}"
        parts, evs = [], [rep.last_update]
        for m in members:
            v, loc, ev = carry[m]
            v, ev = move(v, loc, host, kind, [ev], label)
            parts.append(v)
            evs.append(ev)
        got = pre.get(ridx)
        inp, out, f_fwd, f_bwd = r.step_forward(s, ridx, rep, parts, dim, got)
        fwd_ev = compute(host, f_fwd, evs, "fwd", label)
        out_keys = members[:1] if join_features else members
        # (sizes: only where several streams were joined, the one case that splits)
        rec = StepRecord(rep, inp, out, members, out_keys, r.step_sizes(parts, dim) if len(parts) > 1 else None,
                         dim, fwd_ev, f_bwd, None, got, s, ridx)
        if s == last:  # labels travel from their owner to the loss
            rec.labels = [move(r.step_labels(m), m, host, "labels", [ready.get(m)], label) for m in out_keys]
        saved.append(rec)
        if len(out_keys) == 1:
            new_carry[out_keys[0]] = (out, host, fwd_ev)
        else:
            for m, piece in zip(out_keys, r.step_split(out, rec.sizes)):
                new_carry[m] = (piece, host, fwd_ev)
    return new_carry


def _backward(r: StepRunner, s: int, last: int, recs: list[StepRecord], pending: dict[str, tuple[Any, str, Any]]
              ) -> tuple[dict[str, tuple[Any, str, Any]], float, int]:
    """Stage ``s`` of the backward pass and optimizer steps, for the replicas in ``recs``; returns the input
    gradients that flow back (node -> (gradient, where, event)), and the summed loss and samples."""
    loss_sum, n_samples = 0.0, 0
    next_pending: dict[str, tuple[Any, str, Any]] = {}
    move, compute, ready = r.step_move, r.recorder.compute, r.stream_ready
    opt = r.opt_flops[s]
    for rec in recs:
        rep = rec.rep
        host = rep.host
        label = f"s{s}r{rec.index}"
        if s == last:
            ls, ns = r.step_backward(s, rec, None, pending)
            loss_sum += ls
            n_samples += ns
            evs = [rec.fwd_ev] + [ev for _, ev in rec.labels]
        elif r.step_backprop(s, rec):
            grads, evs = [], [rec.fwd_ev]
            for m in rec.out_keys:
                g, loc, gev = pending[m]
                g, ev = move(g, loc, host, "gradient", [gev], label)
                grads.append(g)
                evs.append(ev)
            r.step_backward(s, rec, grads, pending)
        else:  # a stage with no parameters fed by raw data: nothing flows back
            for m in rec.members:
                ready[m] = rec.fwd_ev
            continue
        bwd_ev = compute(host, rec.bwd_flops + opt, evs, "bwd", label)
        rep.last_update = bwd_ev
        pieces = r.step_input_grads(rec)
        if pieces is not None:
            for m, piece in zip(rec.members, pieces):
                next_pending[m] = (piece, host, bwd_ev)
        else:
            for m in rec.members:
                ready[m] = bwd_ev
    return next_pending, loss_sum, n_samples
