"""What ``flexpl plan`` computes and writes: every candidate costed, the recommended plan, the files.

:func:`cost_candidates` predicts every candidate of a scenario; :func:`plan_scenario` adds the
choice (constraints, Pareto front, the recommendation: :mod:`flexpl.planner.choose`);
:func:`write_plans` writes ``plans.csv``, ``skipped.csv``, ``pareto.png`` and ``best.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


def search_device_cuts(planner: Planner, cands: list[Candidate], rows: list[dict[str, Any]], objective: str,
                       constraints: Sequence[Constraint], progress: Callable[[Any], None] | None = None,
                       to_round: Mapping[str, int | None] | None = None) -> list[Any]:
    """``flexpl plan --search device-cuts``: for every costed FPL preset (:func:`flexpl.planner.search.searchable`),
    the per-device cuts that minimise ``objective`` under ``constraints``, found exactly by structure
    (:func:`flexpl.planner.search.best_device_cuts`); each found plan that differs from its parent joins
    ``cands`` and ``rows`` (its exact walk, in its parent's learning class). Returns the search results.

    ``to_round`` (learning class -> the round it is predicted to reach the first target, None if not):
    a to-target ``objective`` then minimises each parent's exact bill through its class's round; a
    parent whose class does not reach the target is ranked by the whole run's bill.
    """
    from flexpl.planner.classes import learning_key
    from flexpl.planner.search import best_device_cuts, searchable

    results = []
    by_label = {r["plan"]: r for r in rows}
    for parent in [c for c in cands if searchable(c)]:
        rnd = (to_round or {}).get(by_label[parent.label]["learning_class"])
        res = best_device_cuts(planner, parent, objective, constraints, to_round=rnd)
        results.append(res)
        if progress:
            progress(res)
        if res.candidate is None or res.candidate is parent or res.row is None:
            continue
        key = learning_key(planner.context(res.candidate).plan, planner.training_for(parent.strategy))
        cls = by_label[parent.label]["learning_class"]  # the class rules: a per-device cut trains as its parent
        if planner.learning_keys.get(cls) != key:  # (were it ever not so: its own class, not its parent's)
            cls = next((c for c, k in planner.learning_keys.items() if k == key), None) or _new_class(planner, key)
        cands.append(res.candidate)
        rows.append({**res.row, "learning_class": cls})
    return results


def _new_class(planner: Planner, key: str) -> str:
    """A learning class for ``key`` after the ones :func:`cost_candidates` named (``C<n>``)."""
    planner.n_classes += 1
    name = f"C{planner.n_classes}"
    while name in planner.learning_keys:
        name += "+"
    planner.learning_keys[name] = key
    return name


def add_targets(rows: list[dict[str, Any]], accuracy: dict[str, list[float]], targets: Sequence[float],
                max_rounds: int, seed: int = 0) -> dict[str, dict[float, Any]]:
    """Add the to-target columns to every row from its class's pilot accuracies; returns class -> target -> Reach.

    For each target ``A``: ``reaches_A``, ``round_to_target_A`` (and ``_lo``/``_hi``) and the bill to
    the target (``bytes_to_target_A``, ...: the row's exact cumulative bill through that round,
    :func:`flexpl.planner.curves.target_columns`); the first
    target's columns are also written without the suffix (what the ``*_to_target`` objectives read).
    A class whose pilot has fewer than two rounds (successive halving dropped it before) gets no prediction.
    """
    from flexpl.planner.curves import Reach, predict_reach, target_columns

    reach: dict[str, dict[float, Any]] = {}
    for cls, acc in accuracy.items():
        reach[cls] = {a: predict_reach(acc, a, max_rounds, seed) for a in targets}
    for r in rows:
        for i, a in enumerate(targets):
            got = reach.get(r["learning_class"], {}).get(a) or Reach(a, None, None, None, max_rounds)
            cols = target_columns(r, got, f"_{a:g}")
            r.update(cols)
            if i == 0:
                r.update({k[: -len(f"_{a:g}")]: v for k, v in cols.items()})
        cls_acc = accuracy.get(r["learning_class"])
        r["pilot_rounds"] = len(cls_acc) if cls_acc else 0
        r["pilot_accuracy"] = cls_acc[-1] if cls_acc else None
    return reach


def rank(rows: list[dict[str, Any]], objective: str) -> None:
    """Sort ``rows`` in place: feasible plans first, then by the objective, then by bytes per round."""
    col = OBJECTIVES[objective]
    rows.sort(key=lambda r: (not r["feasible"], r.get(col, 0.0), r["bytes_per_round"]))


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
            + (f"# predicted to reach the first target in round {row['round_to_target']}: "
               f"{row['device_energy_j_to_target']:.4g} J on the devices, {row['bytes_to_target']:.4g} bytes, "
               f"{row['sim_time_s_to_target']:.4g} s (the exact bill through that round)\n"
               if row.get("reaches") else "")
            + "# run it with: flexpl run best.yaml\n")
    atomic_write(path, head + yaml.safe_dump(data, sort_keys=False))


def write_plans(out: Path, scn: Scenario, rows: list[dict[str, Any]], skipped: list[dict[str, Any]],
                best: Candidate, best_row: dict[str, Any], objective: str,
                target: float | Sequence[float] | None = None,
                allowed: Callable[[dict[str, Any]], bool] | None = None) -> Path:
    """Write ``plans.csv`` (every costed plan), ``skipped.csv`` (the candidates that cannot run here, and why),
    ``pareto.png`` (with a row of cost-to-target fronts per ``target``, the ``--target-accuracy`` values, when
    the rows carry them; ``allowed``: the plans the rows after the first may draw,
    :func:`flexpl.planner.figures.target_fronts`) and ``best.yaml`` (the recommended plan) into ``out``;
    returns the folder."""
    from flexpl.io.results import prepare_out_dir, write_csv
    from flexpl.planner.figures import plot_pareto

    out = prepare_out_dir(out)
    from flexpl.planner.curves import CUMULATIVE

    # the to-target columns, if any (not the cumulative bill they come from)
    extra = [k for k in (rows[0] if rows else {}) if k not in CSV_COLUMNS and k != CUMULATIVE]
    write_csv(out / "plans.csv", rows, [*CSV_COLUMNS, *extra])
    write_csv(out / "skipped.csv", skipped, ["plan", "family", "reason"])
    plot_pareto(rows, objective, out / "pareto.png", target, allowed)
    write_best(out / "best.yaml", scn, best, best_row, objective)
    return out
