"""The distributed backend: one process per scenario node, the simulator's stage code, gloo point-to-point.

``flexpl run SCENARIO --backend dist`` starts one worker process per node on this machine
(``launch``); ``flexpl worker`` is one such process, and is what ``torchrun`` starts when
a run spans several machines. Every worker builds the same ``Setup`` as the simulator
with ``is_local`` true only for its own node, and runs the simulator's own round loop
(``simulator.run``): replicas of other nodes live on the meta device, so every rank walks
the same global program in the same order and records the same trace (accounted bytes,
FLOPs, virtual time and energy are identical on every rank and equal to the
simulator's), while real arithmetic happens only on the rank that hosts a replica. The
only difference is the transport: ``DistTransport`` really sends each crossing hop by hop
along the topology's route (see ``dist/transport.py`` [Note: no deadlock]).

Beside the work, and outside the measured bytes (separate tag, not counted):

- each round ends with every rank reporting its training loss to rank 0, which timestamps
  the round (``wall_s`` in rounds.csv);
- evaluation rounds gather the weights a test sample meets (``Engine.eval_module`` of every
  stage/replica on the data nodes' paths) to rank 0, which evaluates on the test set with
  the simulator's ``Engine.evaluate``;
- at the end rank 0 gathers every rank's byte counters and writes summary.json with
  ``measured_bytes_total`` and ``per_link[...]["measured_bytes"]`` beside the accounted ones.

Faults: every send/receive waits at most ``engine.timeout_s`` (so it must exceed the
longest local computation between two messages, e.g. a local epoch; rank 0's evaluation
is covered by keepalives); a worker that loses a peer writes a one-line report and exits 3. The launcher watches its workers, names the
node that died or hangs (following who waits for whom), kills the rest and raises
``WorkerFailure``. Rank 0 writes rounds.csv after every round, so finished rounds survive,
and every rank checkpoints what it holds; ``--resume`` continues from the round every rank
committed (:mod:`flexpl.dist.checkpoint`, [Note: dist checkpoints]).
Nothing that travels between ranks is unpickled: tensors land in buffers whose shape and
dtype the receiver knows (gloo here; raw framed bytes under ``--emulate-links``, where a
message that is not FlexPL's stops the run in one line and a stranger on a data port is
refused while the run carries on, see ``emulate/comm.py``). The scenario's failure model
runs as in the simulator; a lost transfer is really resent (``transport.py`` [Note: lost
transfers]).

The backend's parts: :mod:`flexpl.dist.ranks` (ranks, status files, the failure),
:mod:`flexpl.dist.messages` (gathers, barriers, keepalives, evaluation weights),
:mod:`flexpl.dist.worker` (one worker, ``flexpl worker``),
:mod:`flexpl.dist.launch` (the launcher), :mod:`flexpl.dist.transport` (the transport) and
:mod:`flexpl.dist.checkpoint` (checkpoints per rank, the commit marker);
:mod:`flexpl.dist.emulate` runs it over kernel-shaped links.
"""
