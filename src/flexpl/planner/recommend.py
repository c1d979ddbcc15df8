"""What ``flexpl plan`` computes and writes: every candidate costed, the recommended plan, the files.

:func:`cost_candidates` predicts every candidate of a scenario; :func:`plan_scenario` adds the
choice (constraints, Pareto front, the recommendation: :mod:`flexpl.planner.choose`);
:func:`write_plans` writes ``plans.csv``, ``skipped.csv``, ``pareto.png`` and ``best.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexpl.errors import UserError
from flexpl.planner.candidates import Candidate, candidate_data
from flexpl.planner.choose import CSV_COLUMNS, OBJECTIVES, Constraint, choose
from flexpl.planner.predict import Planner

if TYPE_CHECKING:  # heavy imports stay out of ``flexpl --help``
    from flexpl.config.scenario import Scenario
    from flexpl.data import Dataset


def plan_scenario(scn: Scenario, constraints: Sequence[Constraint], objective: str,
                  dataset: Dataset | None = None, progress: Callable[[int, int], None] | None = None
                  ) -> tuple[Planner, list[Candidate], list[dict[str, Any]], dict[str, Any]]:
    """Cost every candidate, mark feasibility and the Pareto front; returns planner, candidates, rows, best."""
    planner, cands, rows = cost_candidates(scn, dataset, progress)
    best = choose(rows, constraints, objective)
    rank(rows, objective)
    return planner, cands, rows, best


def cost_candidates(scn: Scenario, dataset: Dataset | None = None,
                    progress: Callable[[int, int], None] | None = None
                    ) -> tuple[Planner, list[Candidate], list[dict[str, Any]]]:
    """Predict every candidate of ``scn`` (each distinct plan once); returns planner, candidates, rows.

    Candidates that cannot run on this scenario are listed, with the reason, in ``planner.skipped``.
    Every row gets its ``learning_class`` (:mod:`flexpl.planner.classes`); ``planner.learning_keys``
    maps each class to its key and ``planner.n_classes`` counts them.
    """
    from flexpl.planner.classes import assign_classes, learning_key

    planner = Planner(scn, dataset)
    cands, rows, keys = [], [], []
    all_cands = planner.candidates()
    seen: set[str] = set()
    for i, cand in enumerate(all_cands):
        try:
            key = repr(planner.context(cand).plan)
            if key in seen:  # the same plan reached twice (e.g. the scenario's own plan): cost it once
                continue
            seen.add(key)
            pred = planner.predict(cand)
        except UserError as exc:  # e.g. a feature junction the images cannot be cut for: not a candidate here
            planner.skipped.append({"plan": cand.label, "family": cand.family, "reason": str(exc)})
            continue
        cands.append(cand)
        rows.append(pred.row)
        keys.append(learning_key(planner.context(cand).plan, planner.training_for(cand.strategy)))
        if progress:
            progress(i + 1, len(all_cands))
    names, planner.n_classes = assign_classes(keys)
    planner.learning_keys = dict(zip(names, keys))
    for row, name in zip(rows, names):
        row["learning_class"] = name
    return planner, cands, rows


def rank(rows: list[dict[str, Any]], objective: str) -> None:
    """Sort ``rows`` in place: feasible plans first, then by the objective, then by bytes per round."""
    col = OBJECTIVES[objective]
    rows.sort(key=lambda r: (not r["feasible"], r[col], r["bytes_per_round"]))


def write_best(path: Path, scn: Scenario, cand: Candidate, row: dict[str, Any], objective: str) -> None:
    """``best.yaml``: the recommended plan as a complete scenario (``flexpl run best.yaml`` runs it)."""
    import yaml

    from flexpl.config.scenario import validate_scenario
    from flexpl.io.results import atomic_write

    data = candidate_data(scn, cand)
    validate_scenario(data)  # a recommendation that does not load would be a bug, not a user error
    head = (f"# {scn.name}: plan recommended by `flexpl plan --objective {objective}`: {cand.label}\n"
            f"# predicted per round: {row['energy_j_per_round']:.4g} J, {row['sim_time_s_per_round']:.4g} s, "
            f"{row['bytes_per_round']:.4g} bytes, {row['flops_per_round']:.4g} FLOPs; "
            f"device energy {row['device_energy_j_per_round']:.4g} J\n"
            "# run it with: flexpl run best.yaml\n")
    atomic_write(path, head + yaml.safe_dump(data, sort_keys=False))


def write_plans(out: Path, scn: Scenario, rows: list[dict[str, Any]], skipped: list[dict[str, Any]],
                best: Candidate, best_row: dict[str, Any], objective: str) -> Path:
    """Write ``plans.csv`` (every costed plan), ``skipped.csv`` (the candidates that cannot run here, and why),
    ``pareto.png`` and ``best.yaml`` (the recommended plan) into ``out``; returns the folder."""
    from flexpl.io.results import prepare_out_dir, write_csv
    from flexpl.planner.figures import plot_pareto

    out = prepare_out_dir(out)
    write_csv(out / "plans.csv", rows, list(CSV_COLUMNS))
    write_csv(out / "skipped.csv", skipped, ["plan", "family", "reason"])
    plot_pareto(rows, objective, out / "pareto.png")
    write_best(out / "best.yaml", scn, best, best_row, objective)
    return out
