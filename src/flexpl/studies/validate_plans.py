"""``flexpl plan --validate K``: train the K best feasible plans for a few rounds and add their accuracy."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexpl.errors import UserError
from flexpl.planner.candidates import Candidate, candidate_data

if TYPE_CHECKING:
    from flexpl.config.scenario import Scenario
    from flexpl.planner.predict import Planner


def validate(scn: Scenario, planner: Planner, cands: dict[str, Candidate], rows: list[dict[str, Any]], k: int,
             console: Any, ray: str | None = None, ray_cpus: int | None = None,
             targets: list[float] | None = None, out: Path | None = None) -> None:
    """Train the ``k`` best feasible plans for min(rounds, 3) rounds; add their measured accuracy.

    With ``targets`` (``flexpl plan --target-accuracy``) each plan trains up to the scenario's
    rounds and stops once it reaches the highest target; the measured round, bytes and device
    energy to each target ``A`` go into ``measured_round_A``, ``measured_bytes_to_target_A`` and
    ``measured_device_energy_j_to_target_A`` (None where it was not reached).

    With ``ray`` (an address, or "" for a local Ray with ``ray_cpus`` CPUs) each plan trains
    as a Ray task (:mod:`flexpl.studies.ray_tasks`) on the planner's dataset, shipped once, with the
    same columns (targets included); no run folder is written then.

    With ``out`` (``flexpl plan`` passes ``OUT/validate``), each plan trained here (not as a Ray
    task) is written as a run folder ``out/<plan>`` (:func:`run_folder_name`; summary.json,
    rounds.csv, config.yaml), which ``--track`` logs; an earlier plan's ``out`` is replaced.
    """
    from flexpl.config.scenario import apply_strategy_overrides, validate_scenario
    from flexpl.sim.simulator import run, setup

    rounds = scn.training.rounds if targets else min(scn.training.rounds, 3)
    for r in rows:
        r.setdefault("accuracy", None)
        r.setdefault("validated_rounds", None)
    chosen = [r for r in rows if r["feasible"]][:k]
    scns = []
    for r in chosen:
        data = candidate_data(scn, cands[r["plan"]])
        data["training"]["rounds"] = rounds
        if targets:
            data.setdefault("evaluation", {})
            data["evaluation"]["targets"] = sorted(targets)
            data["evaluation"]["stop_at_target"] = True
        if data.get("strategy") != scn.strategy:  # the scenario's own strategy has them applied already
            apply_strategy_overrides(data)
        scns.append(validate_scenario(data))
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)  # only this validation's plans in it
    if ray is not None:
        from flexpl.studies import ray_tasks as ray_exec

        def accuracy(sc: Scenario, dataset: Any) -> tuple[float, int, dict[str, Any]]:  # runs in a Ray worker
            res = run(sc, st=setup(sc, dataset=dataset))
            return res.summary["final_accuracy"], len(res.rounds), res.summary.get("to_target") or {}

        ray_exec.require(ray)
        console.print(f"validating {len(chosen)} plans ({rounds} rounds) as Ray tasks")
        with ray_exec.session(ray, ray_cpus) as rt:
            ref = rt.put(planner.data)
            by_plan = {r["plan"]: r for r in chosen}

            def done(plan: Any, got: tuple[float, int, dict[str, Any]]) -> None:
                acc, n_rounds, to_target = got
                by_plan[plan]["accuracy"], by_plan[plan]["validated_rounds"] = acc, n_rounds
                _measured(by_plan[plan], targets, to_target)
                n = sum(r["validated_rounds"] is not None for r in chosen)
                console.print(f"validated [{n}/{len(chosen)}] {plan}: accuracy {acc:.4f}")

            try:
                ray_exec.run_tasks(rt, [ray_exec.Task(r["plan"], accuracy, (sc, ref), sc.engine.workers or 1)
                                        for r, sc in zip(chosen, scns)], done)
            except ray_exec.TaskError as exc:
                raise UserError(f"--validate {exc.key}: {exc}") from None
        return
    folders: list[str] = []
    for i, (r, sc) in enumerate(zip(chosen, scns)):
        console.print(f"validating [{i + 1}/{len(chosen)}] {r['plan']} ({rounds} rounds)")
        res = run(sc, st=setup(sc, dataset=planner.data))
        s = res.summary
        if out is not None:
            from flexpl.io.results import RunWriter

            name = run_folder_name(r["plan"])
            name = name if name not in folders else f"{name}_{i + 1}"
            folders.append(name)
            RunWriter(out / name, sc.digest(), sc.resolved()).begin().finish(s, res.rounds)
        r["accuracy"], r["validated_rounds"] = s["final_accuracy"], len(res.rounds)
        _measured(r, targets, s.get("to_target") or {})


def _measured(r: dict[str, Any], targets: list[float] | None, to_target: dict[str, Any]) -> None:
    """The measured round, bytes and device energy to each target into ``r`` (None where not reached)."""
    from flexpl.costs.targets import target_key

    for a in targets or ():
        hit = to_target.get(target_key(a))
        r[f"measured_round_{a:g}"] = hit["round"] if hit else None
        r[f"measured_bytes_to_target_{a:g}"] = hit["bytes"] if hit else None
        r[f"measured_device_energy_j_to_target_{a:g}"] = hit["device_energy_j"] if hit else None


def run_folder_name(plan: str) -> str:
    """A plan's label as a folder name: ``fl every=2`` -> ``fl_every=2`` (characters other than letters,
    digits, ``.``, ``_``, ``=``, ``+`` and ``-`` become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", plan).strip("_") or "plan"
