"""One training step, walked once for the engine and the planner: the choreography, not the arithmetic.

A step (the program's ``Step``, see ``flexpl.plan.program``) pushes each data node's batch
through the stages: at every stage the streams that meet at one replica (``layout.serves``)
are joined (batch junction: stacked on dimension 0; feature junction: concatenated on
dimension 1 at the junction stage), moved to the replica's host, run forward; the labels
travel to the last stage; then the backward pass runs stage by stage in reverse, the output
gradients travel back, each replica steps its optimizer, and the input gradients are split
back per stream. Every crossing goes through the runner's ``step_move`` (which records the
transfer; a runner whose values do not change when moved, the planner's shapes, sets it to None
and the walker records the transfer of ``step_nbytes(value)`` bytes itself), and every forward
and backward is recorded here, with the same dependencies and
labels, so the engine (tensors: ``flexpl.sim.tensor_step``) and the planner (shapes:
``flexpl.planner.walk.ShapeWalk``) record the same trace by construction.

The runner (:class:`StepRunner`) does the value-level work only: a stream's input and
labels, moving a value, running a stage, sizes and splits, the loss and backward pass, and
the input gradients. Values are tensors for the engine and ``(shape, element size)``
pairs for the planner (which allocates no tensor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol


class StepRecord(NamedTuple):
    """What one replica's forward pass left for the backward pass (made with ``_record``: a plain tuple's cost)."""

    rep: Any                 # the replica (its ``host`` and ``last_update``)
    inp: Any                 # the joined input it ran on
    out: Any                 # its output
    members: list[str]       # the streams (data nodes) it joined, in order
    out_keys: list[str]      # the streams its output flows on as (one for a feature junction)
    sizes: list[int] | None  # each member's extent along ``dim`` (None for a single member)
    dim: int                 # the dimension the members were joined on
    fwd_ev: Any
    bwd_flops: int
    labels: list[tuple[Any, Any]]  # last stage: (labels, arrival event) per output stream; else empty
    vec: Any                 # runner-specific: what a pre-run gave for this replica (engine: (chunk, row))
    stage: int
    label: str               # the replica's label in the trace, "s{stage}r{index}"


_record = tuple.__new__  # _record(StepRecord, (fields...)): skips NamedTuple's Python-level __new__


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
    step_arithmetic: bool  # False: :meth:`step_backward` does nothing (shapes only), the walker skips it

    def step_streams(self, nodes: Sequence[str]) -> list[Any]:
        """Each node's input batch (on the node)."""

    def step_labels(self, nodes: Sequence[str]) -> list[Any]:
        """Each node's labels (on the node)."""

    def step_move(self, value: Any, src: str, dst: str, kind: str, deps: list, label: str) -> tuple[Any, Any]:
        """Move ``value`` from ``src`` to ``dst`` (recording the transfer); the value there and the arrival event.
        None instead of a method: values stay as they are, the walker records ``step_nbytes(value)`` bytes."""

    def step_nbytes(self, value: Any) -> int:
        """The size of ``value`` in bytes (used only where ``step_move`` is None)."""

    def step_pre(self, s: int, groups: dict[int, list[str]], carry: dict[str, tuple], last: bool) -> dict[int, Any]:
        """Replicas of stage ``s`` run ahead, side by side (vectorized, worker processes): replica -> what
        :meth:`step_forward` gets as ``pre``. Not called at a feature junction; None: nothing runs ahead."""

    def step_forward(self, s: int, ridx: int, rep: Any, parts: list[Any], dim: int, pre: Any
                     ) -> tuple[Any, Any, int, int]:
        """Run replica ``ridx`` of stage ``s`` on ``parts`` joined on ``dim``: (input, output, forward FLOPs,
        backward FLOPs)."""

    def step_sizes(self, parts: list[Any], dim: int) -> list[int]:
        """Each part's extent along ``dim``."""

    def step_split(self, out: Any, sizes: list[int]) -> list[Any]:
        """``out`` split along dimension 0 into pieces of ``sizes``."""

    def step_backprop(self, s: int, recs: list[StepRecord]) -> list[bool]:
        """Whether a gradient flows into the output of each of ``recs`` (a stage before the last)."""

    def step_backward(self, s: int, rec: StepRecord, grads: list[Any] | None, pending: dict[str, tuple]
                      ) -> tuple[float, int]:
        """Backward pass and optimizer step of ``rec`` (last stage: ``grads`` None, the loss first); the
        summed loss and samples it counts. ``pending``: the stage's gradients where they were sent from."""

    def step_input_grads(self, s: int, recs: list[StepRecord]) -> list[list[Any] | None] | None:
        """After their backward passes: the gradient of each of ``recs``' input, one piece per member
        (None where none flows back; None for all: none does)."""


def train_step(r: StepRunner, nodes: Sequence[str]) -> tuple[float, int, list[list[StepRecord]]]:
    """One training step of the streams of ``nodes`` on runner ``r``, through every stage and back.

    Returns the summed training loss, the number of samples and each stage's records.
    """
    ready = r.stream_ready
    carry: dict[str, tuple[Any, str, Any]] = {n: (x, n, ready.get(n)) for n, x in zip(nodes, r.step_streams(nodes))}
    saved: list[list[StepRecord]] = [[] for _ in r.replicas]
    last = len(saved) - 1
    # what every stage uses, looked up once a step (a step's stages are often one replica each)
    rec = r.recorder
    kit = (r, r.layout.serves, r.replicas, ready, rec.compute, rec.transfer, r.step_move, r.step_nbytes)
    fwd = (r.step_forward, r.step_sizes, r.step_split, r.step_pre, r.junction_stage if r.features else None)
    for s in range(last + 1):
        ys = dict(zip(nodes, r.step_labels(nodes))) if s == last else None
        carry = _forward(kit, fwd, s, carry, saved[s], ys)
    loss_sum, n_samples = 0.0, 0
    pending: dict[str, tuple[Any, str, Any]] = {}
    bwd = (r.step_backward if r.step_arithmetic else None, r.opt_flops)
    for s in range(last, -1, -1):
        pending, ls, ns = _backward(kit, bwd, s, last, saved[s], pending)
        loss_sum += ls
        n_samples += ns
    return loss_sum, n_samples, saved


def _forward(kit: tuple, fwd: tuple, s: int, carry: dict[str, tuple[Any, str, Any]], saved: list[StepRecord],
             labels: dict[str, Any] | None) -> dict[str, tuple[Any, str, Any]]:
    """Stage ``s`` of the forward pass: join the streams at each replica, run it, record it in ``saved``;
    returns what flows on (node -> (output, where, event)). ``labels``: the last stage's, per node."""
    r, serves_of, replicas, ready, compute, transfer, move, nbytes = kit
    forward, sizes, split, pre_run, junction = fwd
    serves = serves_of[s]
    groups: dict[int, list[str]] = {}
    for m in carry:
        groups.setdefault(serves[m], []).append(m)
    join_features = s == junction
    dim = 1 if join_features else 0
    pre = {} if join_features or pre_run is None else pre_run(s, groups, carry, labels is not None)
    reps = replicas[s]
    kind = "input" if s == 0 else "activation"
    names = _NAMES[s] if s < len(_NAMES) and len(_NAMES[s]) >= len(reps) else _labels(s, len(reps))
    new_carry: dict[str, tuple[Any, str, Any]] = {}
    for ridx, members in groups.items():
        rep = reps[ridx]
        host = rep.host
        label = names[ridx]
        parts, evs = [], [rep.last_update]
        for m in members:
            v, loc, ev = carry[m]
            if move is None:
                ev = transfer(loc, host, nbytes(v), [ev], kind, label)
            else:
                v, ev = move(v, loc, host, kind, [ev], label)
            parts.append(v)
            evs.append(ev)
        got = pre.get(ridx) if pre else None
        inp, out, f_fwd, f_bwd = forward(s, ridx, rep, parts, dim, got)
        fwd_ev = compute(host, f_fwd, evs, "fwd", label)
        out_keys = members[:1] if join_features else members
        ys = []
        if labels is not None:  # the last stage: labels travel from their owner to the loss
            for m in out_keys:
                y = labels[m]
                ys.append((y, transfer(m, host, nbytes(y), [ready.get(m)], "labels", label)) if move is None
                          else move(y, m, host, "labels", [ready.get(m)], label))
        # (sizes: only where several streams were joined, the one case that splits)
        cuts = sizes(parts, dim) if len(parts) > 1 else None
        saved.append(_record(StepRecord, (rep, inp, out, members, out_keys, cuts, dim, fwd_ev, f_bwd, ys, got, s,
                                          label)))
        if len(out_keys) == 1:
            new_carry[out_keys[0]] = (out, host, fwd_ev)
        else:
            for m, piece in zip(out_keys, split(out, cuts)):
                new_carry[m] = (piece, host, fwd_ev)
    return new_carry


def _backward(kit: tuple, bwd: tuple, s: int, last: int, recs: list[StepRecord],
              pending: dict[str, tuple[Any, str, Any]]) -> tuple[dict[str, tuple[Any, str, Any]], float, int]:
    """Stage ``s`` of the backward pass and optimizer steps, for the replicas in ``recs``; returns the input
    gradients that flow back (node -> (gradient, where, event)), and the summed loss and samples."""
    r, _, _, ready, compute, transfer, move, nbytes = kit
    backward, opt_flops = bwd
    loss_sum, n_samples = 0.0, 0
    next_pending: dict[str, tuple[Any, str, Any]] = {}
    opt = opt_flops[s]
    flows = r.step_backprop(s, recs) if s != last else ()
    done: list[tuple[StepRecord, Any]] = []
    for k, rec in enumerate(recs):
        rep = rec.rep
        host = rep.host
        label = rec.label
        if s == last:
            if backward is not None:
                ls, ns = backward(s, rec, None, pending)
                loss_sum += ls
                n_samples += ns
            evs = [rec.fwd_ev]
            for _, ev in rec.labels:
                evs.append(ev)
        elif flows[k]:
            grads, evs = [], [rec.fwd_ev]
            for m in rec.out_keys:
                g, loc, gev = pending[m]
                if move is None:
                    ev = transfer(loc, host, nbytes(g), [gev], "gradient", label)
                else:
                    g, ev = move(g, loc, host, "gradient", [gev], label)
                grads.append(g)
                evs.append(ev)
            if backward is not None:
                backward(s, rec, grads, pending)
        else:  # a stage with no parameters fed by raw data: nothing flows back
            for m in rec.members:
                ready[m] = rec.fwd_ev
            continue
        bwd_ev = compute(host, rec.bwd_flops + opt, evs, "bwd", label)
        rep.last_update = bwd_ev
        done.append((rec, bwd_ev))
    # (nothing comes before the first stage)
    grads_in = r.step_input_grads(s, [rec for rec, _ in done]) if s and done else None
    for k, (rec, bwd_ev) in enumerate(done):
        pieces = grads_in[k] if grads_in is not None else None
        if pieces is not None:
            host = rec.rep.host
            for m, piece in zip(rec.members, pieces):
                next_pending[m] = (piece, host, bwd_ev)
        else:
            for m in rec.members:
                ready[m] = bwd_ev
    return next_pending, loss_sum, n_samples


_NAMES: list[list[str]] = []  # _NAMES[s][i]: the trace label of replica i of stage s


def _labels(s: int, n: int) -> list[str]:
    """The trace labels ``"s{s}r{i}"`` of replicas ``0 .. n-1`` of stage ``s`` (made once)."""
    while len(_NAMES) <= s:
        _NAMES.append([])
    names = _NAMES[s]
    if len(names) < n:
        names.extend(f"s{s}r{i}" for i in range(len(names), n))
    return names
