"""``flexpl plan``: predict what many plans cost without training them, and recommend one.

    flexpl plan edge-fmnist --objective energy --constraint "sim_time_s_per_round<=120"

1. **Candidates.** Every preset, every cut point (pairs of cuts for three-stage plans:
   per-device front, middle on the edge heads, tail on the server), the groupings the
   topology suggests, FedAvg every 1, 2 or 5 rounds. Each candidate is a scenario variant
   (``strategy`` + ``plan``) that ``flexpl run`` executes as is.
2. **Prediction without training.** A shape walk runs the round's program (``flexpl.plan.program``,
   the one the simulator runs) and records, action by action, the trace the engine records
   for a round (the same ``Recorder``, FLOP counter, byte sizes and clock), from shapes
   alone. The program's ``Repeat`` runs of identical steps are recorded until a copy repeats
   the one before it and then counted, and the
   clock jumps over them once they repeat; see [Note: compressed rounds]. FLOPs and bytes
   equal what a simulated run counts, time and energy agree to rounding (the tests check).
3. **Memory per node.** Parameters, gradients, optimizer state of every replica a node
   hosts (plus the aggregator's averaged copy), and the activations autograd saves for one
   batch, against the node's ``memory_bytes``.
4. **Choice.** Constraints (``COLUMN<=VALUE``), the Pareto front of the objective against
   bytes and time, ``plans.csv``, ``pareto.png`` and ``best.yaml``. ``--validate K`` trains
   the K best feasible plans for a few rounds and adds their accuracy.
5. **Search** (``--search device-cuts``, :mod:`flexpl.planner.search`). Each FPL preset's
   per-device cuts, ``(c + 1) ** N`` plans, costed by their structure from a few exact walks
   and minimised exactly; see [Note: separable costs] there.

This is the planner the background asks for (RightTrain, Malandrino & Chiasserini,
arXiv 2202.11349: choose data/model parallelism and layer placement jointly under energy,
time and memory constraints), restricted to costs: accuracy comes only from ``--validate``.

[Note: compressed rounds] A round repeats itself. In lockstep, every joint step with the
same nodes and batch sizes records the same actions; only their event ids move on. The
round's program (``flexpl.plan.program``) holds such a run as one ``Repeat`` block. The
walk records a step, and when the next identical step records the same actions from the
same state (the same engine events unset), every later identical step is a copy of it
whose dependencies on the step before are shifted by one step's length. The walk keeps
that copy once with a repeat count, which is exact for FLOPs, bytes and energy. The clock
then unrolls the copies one at a time through the simulator's own scheduler
(``schedule_range``) until every independent part of the step (actions linked by
dependencies or a shared node/link) advances by the same time from one copy to the next.
From then on it does so exactly, because the clock rules are invariant under a time
shift, so the clock jumps over the remaining copies. Scheduling block by block equals
scheduling the whole round only while no action overtakes an earlier block's action on
the same resource: the clock checks this, merges the blocks when it happens, and where
it cannot (SplitFed devices lapping each other at a shared server, raw inputs streaming
ahead of the model), or once it has unrolled an eighth of the round without settling, it
schedules the whole round with the simulator's own loop (``costs.clock.sweep``, which
``schedule`` runs), straight from the compressed form: the copies of a block share one
list of successors, as offsets (``costs.clock.FlatRound``). The round without its upload runs the
same until the first upload action is taken; it goes on from there (``FlatRound.resume``).
Makespans are clocked only for the rounds a plan has (``WalkedRound.clock``).
"""


# ``choose`` imports nothing heavy, and its names are bound here at once: the function ``choose`` must
# win over the submodule of that name, which Python sets on this package when it is first imported.
from flexpl.planner.choose import (  # noqa: E402
    BOOL_COLUMNS,
    CSV_COLUMNS,
    ID_COLUMNS,
    MEMORY_FITS,
    NUMERIC_COLUMNS,
    OBJECTIVES,
    Constraint,
    choose,
    parse_constraint,
)

# The other public names, imported from their modules on first use (PEP 562): importing one light
# module of the planner (``flexpl.planner.choose`` for ``flexpl plan --help``) costs no torch import.
_WHERE = {
    "Candidate": "candidates",
    "SYNC_EVERY": "candidates",
    "candidate_data": "candidates",
    "enumerate_candidates": "candidates",
    "CumulativeBill": "curves",
    "TargetFront": "figures",
    "plot_pareto": "figures",
    "target_fronts": "figures",
    "PlanContext": "placement",
    "RoundCost": "placement",
    "WalkedRound": "placement",
    "Planner": "predict",
    "Prediction": "predict",
    "cost_candidates": "recommend",
    "plan_scenario": "recommend",
    "rank": "recommend",
    "write_best": "recommend",
    "write_plans": "recommend",
    "StageCosts": "shapes",
    "StageProbe": "shapes",
    "batch_sizes": "shapes",
    "saved_activation_bytes": "shapes",
    "ShapeWalk": "walk",
}


def __getattr__(name: str) -> object:
    """``flexpl.planner.NAME``: the public name from its module, imported now."""
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'flexpl.planner' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"flexpl.planner.{mod}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BOOL_COLUMNS", "CSV_COLUMNS", "ID_COLUMNS", "MEMORY_FITS", "NUMERIC_COLUMNS", "OBJECTIVES", "SYNC_EVERY",
    "Candidate", "Constraint", "CumulativeBill", "PlanContext", "Planner", "Prediction", "RoundCost", "ShapeWalk",
    "StageCosts", "StageProbe", "TargetFront", "WalkedRound", "batch_sizes", "candidate_data", "choose",
    "cost_candidates", "enumerate_candidates", "parse_constraint",
    "plan_scenario", "plot_pareto", "rank", "saved_activation_bytes", "target_fronts", "write_best",
    "write_plans",
]
