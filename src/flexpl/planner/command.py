"""``flexpl plan`` on the command line: tables, pareto.png, best.yaml, --validate."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexpl.errors import UserError

if TYPE_CHECKING:  # heavy imports stay out of ``flexpl --help``
    from flexpl.config.scenario import Scenario
    from flexpl.data import Dataset
from flexpl.planner.candidates import Candidate, candidate_data
from flexpl.planner.choose import CSV_COLUMNS, OBJECTIVES, Constraint, choose, parse_constraint
from flexpl.planner.predict import Planner


def _table(rows: list[dict[str, Any]], objective: str, top: int, title: str) -> Any:
    from flexpl.io.console import fmt, table

    col = OBJECTIVES[objective]
    cols = list(dict.fromkeys((col, "bytes_per_round", "sim_time_s_per_round", "energy_j_per_round",
                               "device_energy_j_per_round", "max_device_bytes_per_round",
                               "peak_memory_device_max")))
    if any(r.get("accuracy") is not None for r in rows):
        cols.append("accuracy")
    return table(title, ["plan", *(c.replace("_per_round", "/round") for c in cols)],
                 ([("* " if r.get("recommended") else "") + r["plan"],
                   *(fmt(r.get(c)) if r.get(c) is not None else "-" for c in cols)] for r in rows[:top]))


def plot_pareto(rows: list[dict[str, Any]], objective: str, path: Path) -> None:
    """``pareto.png``: the objective against bytes and against time; the front highlighted."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flexpl.io.results import atomic_write

    col = OBJECTIVES[objective]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, x in zip(axes, ("bytes_per_round", "sim_time_s_per_round")):
        for feasible, style in ((False, {"c": "lightgrey", "marker": "x"}), (True, {"c": "tab:blue", "s": 14})):
            pts = [r for r in rows if r["feasible"] == feasible and not r["pareto"]]
            ax.scatter([r[x] for r in pts], [r[col] for r in pts], label="infeasible" if not feasible
                       else "feasible", **style)
        front = sorted((r for r in rows if r["pareto"]), key=lambda r: r[x])
        ax.plot([r[x] for r in front], [r[col] for r in front], "o-", c="tab:red", label="Pareto front")
        for r in front:
            ax.annotate(r["plan"], (r[x], r[col]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        best = next(r for r in rows if r["recommended"])
        ax.scatter([best[x]], [best[col]], marker="*", s=220, c="gold", edgecolors="k", zorder=5,
                   label="recommended")
        # log axes spread plans over orders of magnitude; a zero (e.g. free energy) needs linear
        ax.set_xscale("log" if all(r[x] > 0 for r in rows) else "linear")
        ax.set_yscale("log" if all(r[col] > 0 for r in rows) else "linear")
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(col.replace("_", " "))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"flexpl plan: {objective} against bytes and time (per round)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


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


def validate(scn: Scenario, planner: Planner, cands: dict[str, Candidate], rows: list[dict[str, Any]], k: int,
             console: Any, ray: str | None = None, ray_cpus: int | None = None) -> None:
    """Train the ``k`` best feasible plans for min(rounds, 3) rounds; add their measured accuracy.

    With ``ray`` (an address, or "" for a local Ray with ``ray_cpus`` CPUs) each plan trains
    as a Ray task (:mod:`flexpl.studies.ray_tasks`) on the planner's dataset, shipped once.
    """
    from flexpl.config.scenario import apply_strategy_overrides, validate_scenario
    from flexpl.sim.simulator import run, setup

    rounds = min(scn.training.rounds, 3)
    for r in rows:
        r.setdefault("accuracy", None)
        r.setdefault("validated_rounds", None)
    chosen = [r for r in rows if r["feasible"]][:k]
    scns = []
    for r in chosen:
        data = candidate_data(scn, cands[r["plan"]])
        data["training"]["rounds"] = rounds
        if data.get("strategy") != scn.strategy:  # the scenario's own strategy has them applied already
            apply_strategy_overrides(data)
        scns.append(validate_scenario(data))
    if ray is not None:
        from flexpl.studies import ray_tasks as ray_exec

        def accuracy(sc: Scenario, dataset: Any) -> float:  # runs in a Ray worker
            return run(sc, st=setup(sc, dataset=dataset)).summary["final_accuracy"]

        ray_exec.require(ray)
        console.print(f"validating {len(chosen)} plans ({rounds} rounds) as Ray tasks")
        with ray_exec.session(ray, ray_cpus) as rt:
            ref = rt.put(planner.data)
            by_plan = {r["plan"]: r for r in chosen}

            def done(plan: Any, acc: float) -> None:
                by_plan[plan]["accuracy"], by_plan[plan]["validated_rounds"] = acc, rounds
                n = sum(r["validated_rounds"] is not None for r in chosen)
                console.print(f"validated [{n}/{len(chosen)}] {plan}: accuracy {acc:.4f}")

            try:
                ray_exec.run_tasks(rt, [ray_exec.Task(r["plan"], accuracy, (sc, ref), sc.engine.workers or 1)
                                        for r, sc in zip(chosen, scns)], done)
            except ray_exec.TaskError as exc:
                raise UserError(f"--validate {exc.key}: {exc}") from None
        return
    for i, (r, sc) in enumerate(zip(chosen, scns)):
        console.print(f"validating [{i + 1}/{len(chosen)}] {r['plan']} ({rounds} rounds)")
        s = run(sc, st=setup(sc, dataset=planner.data)).summary
        r["accuracy"], r["validated_rounds"] = s["final_accuracy"], rounds


# ---------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Planner options (the CLI has already added scenario, --set, --seed, --out, --quiet)."""
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default="energy",
                        help="what the recommended plan minimises, per round (default: energy)")
    parser.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                        help="COLUMN<=VALUE (or >=, <, >, ==), e.g. energy_j_per_round<=50, or a boolean "
                             "column such as device_memory_fits (repeatable)")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="rows of the Pareto table (default 10)")
    parser.add_argument("--validate", type=int, default=0, metavar="K",
                        help="train the K best feasible plans for min(rounds, 3) rounds and add their accuracy")
    from flexpl.studies import ray_tasks as ray_exec

    ray_exec.add_argument(parser, "each of --validate's K trainings")


def plan_scenario(scn: Scenario, constraints: Sequence[Constraint], objective: str,
                  dataset: Dataset | None = None, progress: Callable[[int, int], None] | None = None
                  ) -> tuple[Planner, list[Candidate], list[dict[str, Any]], dict[str, Any]]:
    """Cost every candidate, mark feasibility and the Pareto front; returns planner, candidates, rows, best."""
    planner, cands, rows = cost_candidates(scn, dataset, progress)
    best = choose(rows, constraints, objective)
    col = OBJECTIVES[objective]
    rows.sort(key=lambda r: (not r["feasible"], r[col], r["bytes_per_round"]))
    return planner, cands, rows, best


def cost_candidates(scn: Scenario, dataset: Dataset | None = None,
                    progress: Callable[[int, int], None] | None = None
                    ) -> tuple[Planner, list[Candidate], list[dict[str, Any]]]:
    """Predict every candidate of ``scn`` (each distinct plan once); returns planner, candidates, rows.

    Candidates that cannot run on this scenario are listed, with the reason, in ``planner.skipped``.
    """
    planner = Planner(scn, dataset)
    cands, rows = [], []
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
        if progress:
            progress(i + 1, len(all_cands))
    return planner, cands, rows


def main(args: argparse.Namespace) -> int:
    """flexpl plan: cost every candidate plan, print the Pareto front, write plans.csv, pareto.png, best.yaml."""
    from flexpl.config.scenario import load_scenario
    from flexpl.io.console import make_console, progress
    from flexpl.io.results import prepare_out_dir, write_csv

    if args.top < 1:
        raise UserError(f"--top: must be a positive integer, got {args.top}")
    if args.validate < 0:
        raise UserError(f"--validate: must be 0 or a positive integer, got {args.validate}")
    if getattr(args, "ray", None) is not None:  # fail before the costing, not after it
        from flexpl.studies import ray_tasks as ray_exec

        if not args.validate:
            raise UserError("--ray: only --validate K trains (as Ray tasks); add --validate K or drop --ray")
        ray_exec.require(args.ray)
    constraints = [parse_constraint(c) for c in args.constraint]  # bad input fails before any work
    scn = load_scenario(args.scenario, args.set, None, args.seed)
    console = make_console(args.quiet)
    out = Path(args.out or f"results/{scn.name}-plan")
    t0 = time.perf_counter()
    with progress(args.quiet or not console.is_terminal, console) as bar:
        task = bar.add_task("costing plans", total=None)
        planner, cands, rows = cost_candidates(scn, progress=lambda i, n: bar.update(task, completed=i, total=n))
    wall = time.perf_counter() - t0
    best = choose(rows, constraints, args.objective)  # raises the one-line "no plan meets ..." error
    rows.sort(key=lambda r: (not r["feasible"], r[OBJECTIVES[args.objective]], r["bytes_per_round"]))
    by_label = {c.label: c for c in cands}
    if args.validate:
        validate(scn, planner, by_label, rows, args.validate, console, getattr(args, "ray", None))
    out = prepare_out_dir(out)
    write_csv(out / "plans.csv", rows, list(CSV_COLUMNS))
    skipped_csv = out / "skipped.csv"
    write_csv(skipped_csv, planner.skipped, ["plan", "family", "reason"])
    plot_pareto(rows, args.objective, out / "pareto.png")
    write_best(out / "best.yaml", scn, by_label[best["plan"]], best, args.objective)
    front = [r for r in rows if r["pareto"]]
    n_feasible = sum(r["feasible"] for r in rows)
    console.print(_table(front, args.objective, args.top,
                         f"{scn.name}: Pareto-optimal plans ({len(front)} of {n_feasible} feasible, {len(rows)} "
                         f"costed in {wall:.2f} s), {args.objective} against bytes and time"))
    # the best feasible plan of every family, for context when one plan dominates the front
    families = list(dict.fromkeys(r["family"] for r in rows if r["feasible"]))
    per_family = [next(r for r in rows if r["feasible"] and r["family"] == f) for f in families]
    console.print(_table(per_family, args.objective, len(per_family),
                         f"best feasible plan of each family, by {args.objective}"))
    if getattr(scn.failures, "active", False):
        console.print("note: predictions assume no failures (the scenario's failure model is not costed)")
    if planner.skipped:  # said even with --quiet: a candidate that silently vanished would mislead
        import sys

        names = [s["plan"] for s in planner.skipped]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        reasons = "; ".join(dict.fromkeys(s["reason"] for s in planner.skipped[:5]))
        print(f"flexpl: warning: plan skipped {len(names)} candidate(s) that cannot run here ({shown}): "
              f"{reasons} -- every one and why in {skipped_csv}", file=sys.stderr)
    console.print(f"recommended ({args.objective}): {best['plan']} -> {out}/best.yaml")
    console.print(f"every plan in {out}/plans.csv, the front in {out}/pareto.png")
    return 0
