"""A run's ``summary.json``: its totals, per node and per link, from the cost counters and the rows.

Split out of :mod:`flexpl.sim.simulator`, which calls :func:`make_summary` at the end of a run
(or when training diverges); key names are part of FlexPL's interface.
"""

from __future__ import annotations

from typing import Any

import torch

from flexpl.costs.bill import Totals, bill
from flexpl.costs.targets import cost_to_targets, reached_all
from flexpl.models import count_params
from flexpl.plan.spec import Plan
from flexpl.version import __version__


def make_summary(st: Any, totals: Totals, rows: list[dict[str, Any]], ev: dict[str, float],
                 wall_s: float) -> dict[str, Any]:
    """The ``summary.json`` of a run (key names are part of FlexPL's interface); ``st`` is the run's
    :class:`flexpl.sim.simulator.Setup`."""
    scn, topo, eng = st.scn, st.topo, st.engine
    b = bill(totals, topo, totals.sim_time, scn.energy.include_idle, scn.costs.include_eval)
    params_at: dict[str, int] = {}  # parameters held per node (one pass: many clients share one working model)
    sizes: dict[int, int] = {}
    for reps in eng.replicas:
        for r in reps:
            k = sizes.get(id(r.module))
            if k is None:
                k = sizes[id(r.module)] = count_params(r.module)
            params_at[r.host] = params_at.get(r.host, 0) + k
    per_node = {}
    for n, d in totals.node.items():
        bn = b["per_node"][n]
        per_node[n] = {"flops": bn["flops"], "bytes_sent": int(d["bytes_sent"]),
                       "bytes_received": int(d["bytes_received"]),
                       "energy_j": bn["energy_j"],
                       "energy_j_compute": d["energy_j_compute"], "energy_j_comm": d["energy_j_comm"],
                       "energy_j_idle": bn["energy_j_idle"], "busy_s": d["busy_s"],
                       "comm_s": d.get("comm_s", 0.0), "idle_s": bn["idle_s"],
                       "eval_flops": bn["eval_flops"], "eval_energy_j": bn["eval_energy_j"],
                       "params": params_at.get(n, 0)}
    per_link = {n: {"bytes": int(d["bytes"]), "busy_s": d["busy_s"], "energy_j": d["energy_j"]}
                for n, d in totals.link.items()}
    last = rows[-1] if rows else {}
    extra = {"final_val_accuracy": last.get("val_accuracy"), "final_val_loss": last.get("val_loss")} \
        if st.val is not None else {}
    return {
        "scenario": scn.name, "strategy": st.plan.name, "seed": scn.seed, "rounds": len(rows),
        "final_accuracy": last.get("accuracy"), "final_loss": last.get("loss"), **extra,
        "accuracy_min": ev.get("accuracy_min"), "accuracy_ensemble": ev.get("accuracy_ensemble"),
        "flops_total": b["flops"], "bytes_total": int(totals.bytes), "sim_time_s": totals.sim_time,
        "energy_j_total": b["energy_j"], "energy_j_compute": totals.energy_compute,
        "energy_j_comm": totals.energy_comm, "energy_j_idle": b["energy_j_idle"],
        "eval_flops": b["eval_flops"], "eval_energy_j": b["eval_energy_j"],
        "wasted_flops": int(totals.wasted_flops), "wasted_bytes": int(totals.wasted_bytes),
        "wasted_energy_j": totals.wasted_energy,
        "model_params": st.model_params, "model_bytes": st.model_bytes,
        "params_total": sum(params_at.values()),
        "wall_s": wall_s, "executor": st.executor.mode,
        "to_target": cost_to_targets(rows, scn.evaluation.targets),
        "stopped_at_target": bool(scn.evaluation.stop_at_target and len(rows) < scn.training.rounds
                                  and reached_all(rows, scn.evaluation.targets)),
        "rounds_completed": len(rows),
        "plan": plan_dict(st.plan),
        "per_node": per_node, "per_link": per_link,
        "flexpl_version": __version__, "torch_version": torch.__version__, "scenario_sha256": scn.digest(),
    }


def plan_dict(plan: Plan) -> dict[str, Any]:
    """The plan as plain data (for summaries and reports)."""
    return {"name": plan.name, "junction": plan.junction, "schedule": plan.schedule,
            "collect_data": plan.collect_data,
            "stages": [{"blocks": [s.start, s.end], "replication": s.replication, "host": s.host,
                        "sync": {"kind": s.sync.kind, "every": s.sync.every, "unit": s.sync.unit,
                                 "at": s.sync.at, **({"scope": s.sync.scope} if s.sync.scope != "all" else {})},
                        **({"hosts": dict(s.hosts)} if s.hosts else {})}
                       for s in plan.stages]}
