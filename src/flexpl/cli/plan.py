"""``flexpl plan``: cost every candidate plan without training, print the Pareto front, recommend one.

The planner itself is :mod:`flexpl.planner`; this module reads the flags, shows the progress
and prints the tables.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flexpl.cli.common import (
    check_track,
    ray_argument,
    scenario_arguments,
    scenario_trackers,
    track_argument,
    track_results,
)
from flexpl.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from flexpl.planner.choose import OBJECTIVES

    scenario_arguments(parser)
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default="energy",
                        help="what the recommended plan minimises, per round (default: energy)")
    parser.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                        help="COLUMN<=VALUE (or >=, <, >, ==), e.g. energy_j_per_round<=50, or a boolean "
                             "column such as device_memory_fits (repeatable)")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="rows of the Pareto table (default 10)")
    parser.add_argument("--target-accuracy", type=float, action="append", default=[], metavar="A",
                        help="predict for every plan the round at which it reaches accuracy A (in (0, 1]) and "
                             "its bytes, energy, time and FLOPs to A, from short pilots of one plan per "
                             "learning class (repeatable; the first A is what the *_to_target objectives read)")
    parser.add_argument("--pilot-budget", type=int, default=None, metavar="ROUNDS",
                        help="rounds the pilots may train, all classes together (default: successive halving "
                             "from 2 rounds per class, doubling for the better half, up to training.rounds)")
    parser.add_argument("--validate", type=int, default=0, metavar="K",
                        help="train the K best feasible plans for min(rounds, 3) rounds and add their accuracy")
    parser.add_argument("--search", choices=["device-cuts"], default=None,
                        help="device-cuts: for every FPL preset (fpl, fpl-sync, fpl-group at each cut), also find "
                             "the cut of each device (0..the plan's cut) that minimises the objective under the "
                             "constraints, exactly, over all (cut+1)^devices plans, costed by their structure from "
                             "the exact walk; the found plans join plans.csv (family '<parent>-search')")
    ray_argument(parser, "each pilot of a --target-accuracy rung and each of --validate's K trainings")
    track_argument(parser)


def main(args: argparse.Namespace) -> int:
    """flexpl plan: cost every candidate plan, print the Pareto front, write plans.csv, pareto.png, best.yaml."""
    from flexpl.config.scenario import load_scenario
    from flexpl.io.console import make_console, progress
    from flexpl.planner.choose import MEMORY_FITS, TARGET_OBJECTIVES, choose, parse_constraint
    from flexpl.planner.recommend import add_targets, cost_candidates, rank, write_plans

    if args.top < 1:
        raise UserError(f"--top: must be a positive integer, got {args.top}")
    if args.validate < 0:
        raise UserError(f"--validate: must be 0 or a positive integer, got {args.validate}")
    trackers = check_track(args)
    if args.track and not args.validate:
        raise UserError("--track: plan trains nothing to track without --validate K; add --validate K or drop --track")
    from flexpl.planner.curves import check_target

    targets = list(dict.fromkeys(check_target(a) for a in args.target_accuracy))
    if args.pilot_budget is not None and not targets:
        raise UserError("--pilot-budget: only --target-accuracy A runs pilots; add --target-accuracy or drop it")
    if args.pilot_budget is not None and args.pilot_budget < 1:
        raise UserError(f"--pilot-budget: must be a positive number of rounds, got {args.pilot_budget}")
    if args.objective in TARGET_OBJECTIVES and not targets:
        raise UserError(f"--objective {args.objective}: costs to a target need --target-accuracy A (e.g. 0.7)")
    if args.ray is not None:  # fail before the costing, not after it
        from flexpl.io.ray_cluster import require

        if not args.validate and not targets:
            raise UserError("--ray: only --target-accuracy's pilots and --validate K train (as Ray tasks); add one "
                            "or drop --ray")
        require(args.ray)
    constraints = [parse_constraint(c) for c in args.constraint]  # bad input fails before any work
    if not targets and any(c.column == "reaches" for c in constraints):
        raise UserError("--constraint reaches: needs --target-accuracy A (e.g. 0.7)")
    if args.search == "device-cuts":
        from flexpl.planner.search import check_search

        check_search(args.objective, constraints)  # fail before the costing, not after it
    scn = load_scenario(args.scenario, args.set, None, args.seed)
    trackers = scenario_trackers(scn.tracking, trackers) if args.validate else []  # tracking:, then --track
    out = Path(args.out or f"results/{scn.name}-plan")
    console = make_console(args.quiet)
    t0 = time.perf_counter()
    with progress(args.quiet or not console.is_terminal, console) as bar:
        task = bar.add_task("costing plans", total=None)
        planner, cands, rows = cost_candidates(scn, progress=lambda i, n: bar.update(task, completed=i, total=n))
    wall = time.perf_counter() - t0
    pilots = reach = None
    if targets:
        from flexpl.studies.pilots import check_budget, run_pilots

        budget = check_budget(args.pilot_budget, planner.n_classes, scn.training.rounds)
        console.print(f"pilots: {planner.n_classes} learning classes, budget {budget} rounds, seed {scn.seed}")
        # on a cluster (an ADDRESS), the pilots' checkpoints go where its nodes see them: in --out
        folder = out / "pilots-checkpoints" if args.ray else None  # args.ray "": a local Ray
        pilots = run_pilots(scn, planner, {c.label: c for c in cands}, rows, budget,
                            None if args.quiet else console,
                            _pilot_score(rows, constraints, args.objective, targets[0], scn.training.rounds, scn.seed),
                            ray=args.ray, folder=folder)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        reach = add_targets(rows, pilots.accuracy, targets, scn.training.rounds, scn.seed)
    if args.search == "device-cuts":  # after the pilots: a to-target objective searches the bill to the target
        from flexpl.planner.recommend import search_device_cuts

        t1 = time.perf_counter()
        def said(r: Any) -> None:
            what = ("no feasible plan" if r.candidate is None else "the parent's own cuts" if r.candidate is r.parent
                    else r.candidate.label.removeprefix(r.parent.label).strip())
            console.print(f"  {r.parent.label}: {r.space:,} plans, {r.walks} walks, {r.seconds:.1f} s -> {what}"
                          + ("" if r.proven else " (best walked, not proven)"))

        to_round = ({cls: by_t[targets[0]].round for cls, by_t in reach.items()}
                    if reach is not None and args.objective in TARGET_OBJECTIVES else None)
        found = search_device_cuts(planner, cands, rows, args.objective, constraints,
                                   None if args.quiet else said, to_round)
        searched = sum(r.space for r in found)
        console.print(f"search device-cuts: {searched:,} plans of {len(found)} FPL presets searched exactly by "
                      f"structure ({sum(r.walks for r in found)} exact walks) in {time.perf_counter() - t1:.1f} s; "
                      f"{sum(r.candidate is not None and r.candidate is not r.parent for r in found)} better "
                      "per-device cuts added"
                      + ("" if all(r.proven for r in found) else
                         " (objective time: the walk budget ran out before some minimum was proven)"))
        if reach is not None:  # the found plans' to-target columns (their classes' pilots)
            add_targets(rows, pilots.accuracy, targets, scn.training.rounds, scn.seed)
        wall += time.perf_counter() - t1
    best = choose(rows, constraints, args.objective)  # raises the one-line "no plan meets ..." error
    rank(rows, args.objective)
    by_label = {c.label: c for c in cands}
    if args.validate:
        from flexpl.studies.validate_plans import validate

        validate(scn, planner, by_label, rows, args.validate, console, args.ray, targets=targets or None,
                 out=out / "validate")
    drawn = _draw_best_aside(scn, planner, by_label[best["plan"]], out)  # beside plans.csv and pareto.png
    out = write_plans(out, scn, rows, planner.skipped,
                      by_label[best["plan"]], best, args.objective, targets or None,
                      lambda r: all(c.holds(r) for c in (MEMORY_FITS, *constraints)))
    if pilots is not None:  # every pilot's curve, to refit or plot
        from flexpl.io.results import write_csv

        write_csv(out / "pilots.csv", pilots.rows(), list(pilots.COLUMNS))
    picture = drawn()
    front = [r for r in rows if r["pareto"]]
    n_feasible = sum(r["feasible"] for r in rows)
    console.print(_table(front, args.objective, args.top,
                         f"{scn.name}: Pareto-optimal plans ({len(front)} of {n_feasible} feasible, {len(rows)} "
                         f"costed in {wall:.2f} s), {args.objective} against bytes and time"))
    console.print(f"{len(rows)} candidates fall into {planner.n_classes} learning classes "
                  "(plans that train alike; column learning_class of plans.csv)")
    # the best feasible plan of every family, for context when one plan dominates the front
    families = list(dict.fromkeys(r["family"] for r in rows if r["feasible"]))
    per_family = [next(r for r in rows if r["feasible"] and r["family"] == f) for f in families]
    console.print(_table(per_family, args.objective, len(per_family),
                         f"best feasible plan of each family, by {args.objective}"))
    if getattr(scn.failures, "active", False):
        console.print("note: predictions assume no failures (the scenario's failure model is not costed)")
    if planner.skipped:  # said even with --quiet: a candidate that silently vanished would mislead
        names = [s["plan"] for s in planner.skipped]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        reasons = "; ".join(dict.fromkeys(s["reason"] for s in planner.skipped[:5]))
        print(f"flexpl: warning: plan skipped {len(names)} candidate(s) that cannot run here ({shown}): "
              f"{reasons} -- every one and why in {out / 'skipped.csv'}", file=sys.stderr)
    if pilots is not None:
        _print_targets(console, rows, pilots, targets, constraints, args.objective, scn.training.rounds)
        if args.validate:
            console.print(_validated(rows, targets))
    moves = " (it moves raw data off the devices)" if best.get("raw_data_moved") else ""
    console.print(f"recommended ({args.objective}): {best['plan']}{moves} -> {out}/best.yaml")
    console.print(f"every plan in {out}/plans.csv, the front in {out}/pareto.png"
                  + (f" (and the fronts of the cost to {', '.join(f'{a:g}' for a in targets)})" if targets else "")
                  + (f", the recommended plan drawn in {picture}" if picture else ""))
    if args.validate:  # each validated plan's run folder: one parent run, a child per plan
        from dataclasses import replace

        # TensorBoard's default folder: OUT/tensorboard, not inside validate/ (which the next --validate replaces)
        track_results(out / "validate", [replace(t, where=str(out / "tensorboard"))
                                         if t.kind == "tensorboard" and t.where is None else t for t in trackers])
    return 0


def _draw_best_aside(scn: Any, planner: Any, cand: Any, out: Path) -> Callable[[], Path | None]:
    """Start drawing ``best_plan.png`` (:func:`_draw_best`) in a forked process, so that it overlaps the
    writing of plans.csv and pareto.png on another core (about 2 s of ``flexpl plan fog-imagenet``'s 10 on
    2 cores); returns a function that waits for it and gives the picture's path (None: not drawn, said
    in one line by this process). Where there is no fork, it is drawn here and now."""
    if not hasattr(os, "fork"):
        picture = _draw_best(scn, planner, cand, out)
        return lambda: picture
    from flexpl.io.results import prepare_out_dir

    prepare_out_dir(out)
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: matplotlib only, on one torch thread (OpenMP's pool does not survive a fork)
        code, why = 1, ""
        try:
            os.close(r)
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(1)
            why = _draw_best(scn, planner, cand, out, warn=False) or ""
            code = 0 if not why else 1
        except BaseException as exc:
            why = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(w, why.encode()[:4000])  # the parent says it (its stderr may not be this fd)
            os._exit(code)
    os.close(w)

    def wait() -> Path | None:
        with os.fdopen(r, "rb") as f:
            why = f.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == 0:
            return out / "best_plan.png"
        why = why or f"the drawing process ended with status {os.waitstatus_to_exitcode(status)}"
        print(f"flexpl: warning: no best_plan.png in {out}/: {why}".splitlines()[0], file=sys.stderr)
        return None
    return wait


def _draw_best(scn: Any, planner: Any, cand: Any, out: Path, warn: bool = True) -> Any:
    """Draw the recommended plan on the topology into ``out/best_plan.png``; returns its path, or, if it
    cannot be drawn, None after a one-line warning (``warn=False``: the reason instead, unsaid)."""
    from flexpl.io.results import atomic_write
    from flexpl.report.plan_picture import draw, picture_of_scenario

    try:
        png = draw(picture_of_scenario(scn, cand.plan, cand.strategy, planner=planner))
    except (ImportError, UserError) as exc:
        if not warn:
            return str(exc) or type(exc).__name__
        print(f"flexpl: warning: no best_plan.png in {out}/: {exc}".splitlines()[0], file=sys.stderr)
        return None
    atomic_write(out / "best_plan.png", png)
    return None if not warn else out / "best_plan.png"


def _table(rows: list[dict[str, Any]], objective: str, top: int, title: str) -> Any:
    """The first ``top`` of ``rows``: the objective, bytes, time, energy and memory per round ("*": recommended)."""
    from flexpl.io.console import fmt, table
    from flexpl.planner.choose import OBJECTIVES

    col = OBJECTIVES[objective]
    cols = list(dict.fromkeys((col, "bytes_per_round", "sim_time_s_per_round", "energy_j_per_round",
                               "device_energy_j_per_round", "max_device_bytes_per_round",
                               "peak_memory_device_max")))
    if "round_to_target" in (rows[0] if rows else {}):
        cols += ["round_to_target", "pilot_accuracy"]
    if any(r.get("accuracy") is not None for r in rows):
        cols.append("accuracy")
    return table(title, ["plan", *(c.replace("_per_round", "/round") for c in cols)],
                 ([("* " if r.get("recommended") else "") + r["plan"],
                   *(fmt(r.get(c)) if r.get(c) is not None else "-" for c in cols)] for r in rows[:top]))


def _pilot_score(rows: list[dict[str, Any]], constraints: list[Any], objective: str, target: float,
                 max_rounds: int, seed: int) -> Any:
    """Successive halving keeps the classes whose cheapest feasible member is predicted cheapest to ``target``."""
    import math

    from flexpl.planner.choose import MEMORY_FITS, OBJECTIVES, TARGET_OBJECTIVES
    from flexpl.planner.curves import TO_TARGET, cost_to_round, predict_reach

    col = OBJECTIVES[objective if objective in TARGET_OBJECTIVES else "device_energy_to_target"]
    per_round = next(k for k, v in TO_TARGET.items() if v == col)
    members: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if all(c.holds(r) for c in (MEMORY_FITS, *constraints)):
            members.setdefault(r["learning_class"], []).append(r)

    def score(cls: str, acc: list[float]) -> float:
        reach = predict_reach(acc, target, max_rounds, seed)
        # the cheapest feasible member's exact bill through the predicted round
        return min((cost_to_round(r, per_round, reach.round) for r in members.get(cls, [])), default=math.inf)
    return score


def _print_targets(console: Any, rows: list[dict[str, Any]], pilots: Any, targets: list[float],
                   constraints: list[Any], objective: str, max_rounds: int) -> None:
    """The pilots' cost against training every class to each target, and each target's pick."""
    from flexpl.planner.choose import OBJECTIVES, TARGET_OBJECTIVES, pick

    rungs = ", ".join(f"{n} x {r}" for r, n in pilots.rungs)
    console.print(f"pilots trained {pilots.rounds_trained} rounds in {pilots.wall_s:.1f} s (classes x rounds: "
                  f"{rungs}; seed {pilots.seed})")
    by_class = {r["learning_class"]: r for r in rows}
    obj = objective if objective in TARGET_OBJECTIVES else "device_energy_to_target"
    for a in targets:
        sfx = f"_{a:g}"
        reached = [r for r in by_class.values() if r.get(f"reaches{sfx}")]
        full = sum(r[f"round_to_target{sfx}"] for r in reached) + max_rounds * (len(by_class) - len(reached))
        console.print(f"target {a:g}: {len(reached)} of {len(by_class)} classes reach it within {max_rounds} rounds; "
                      f"training every class to it (or to the last round) would take {full} rounds")
        best = pick(rows, constraints, obj, sfx)
        if best is None:
            console.print(f"target {a:g}: no feasible plan reaches it (by {obj})")
            continue
        moves = "; it moves raw data off the devices" if best["raw_data_moved"] else ""
        col = OBJECTIVES[obj]
        console.print(f"target {a:g}: pick by {obj}: {best['plan']} (class {best['learning_class']}), round "
                      f"{best[f'round_to_target{sfx}']} [{best[f'round_to_target_lo{sfx}']}, "
                      f"{best[f'round_to_target_hi{sfx}']}], {col} {best[col + sfx]:.4g}, bytes "
                      f"{best[f'bytes_to_target{sfx}']:.4g}{moves}")


def _validated(rows: list[dict[str, Any]], targets: list[float]) -> Any:
    """Predicted against measured round, bytes and device energy to each target, for the validated plans."""
    from flexpl.io.console import fmt, table

    def show(v: Any) -> str:
        return "-" if v is None or v == float("inf") else fmt(v)

    body = []
    for r in rows:
        if r.get("validated_rounds") is None:
            continue
        for a in targets:
            sfx = f"_{a:g}"
            body.append((r["plan"], f"{a:g}",
                         f"{show(r.get(f'round_to_target{sfx}'))} [{show(r.get(f'round_to_target_lo{sfx}'))}, "
                         f"{show(r.get(f'round_to_target_hi{sfx}'))}]",
                         show(r.get(f"measured_round{sfx}")), show(r.get(f"bytes_to_target{sfx}")),
                         show(r.get(f"measured_bytes_to_target{sfx}")),
                         show(r.get(f"device_energy_j_to_target{sfx}")),
                         show(r.get(f"measured_device_energy_j_to_target{sfx}"))))
    return table("validated: predicted against measured, to each target",
                 ["plan", "target", "round (pred) [lo, hi]", "round (meas)", "bytes (pred)", "bytes (meas)",
                  "device J (pred)", "device J (meas)"], body)
