"""``flexpl tune``: choose each strategy's values on validation data; prints the choice, writes tuned.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexpl.cli.common import (
    DEFAULT_STRATEGIES,
    check_track,
    names,
    scenario_arguments,
    scenario_trackers,
    track_argument,
    track_results,
)
from flexpl.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scenario_arguments(parser)
    parser.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                        help=f"comma-separated presets, each tuned separately (default: {DEFAULT_STRATEGIES})")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="values to try for one scenario field (repeatable; all combinations are tried), "
                             "e.g. --grid training.optimizer.lr=0.005,0.02,0.05")
    parser.add_argument("--seeds", default=None, metavar="S1,S2,...",
                        help="seeds to average the validation accuracy over (default: the scenario's seed)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="run cells in N worker processes")
    track_argument(parser)


def main(args: argparse.Namespace) -> int:
    """flexpl tune: run the grid per strategy and seed, choose on validation accuracy, write tuned.yaml."""
    from flexpl.config.scenario import scenario_tracking
    from flexpl.studies.seeds import parse_seeds
    from flexpl.studies.tune import run_tune

    trackers = check_track(args)
    trackers = scenario_trackers(scenario_tracking(args.scenario, list(args.set)), trackers)  # tracking:, then --track
    if args.seed is not None and args.seeds is not None:
        raise UserError("--seed: give either --seed N or --seeds S1,S2,... (tune averages over --seeds)")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else ([args.seed] if args.seed is not None else None)
    t = run_tune(args.scenario, list(args.set), names(args.strategies), list(args.grid), seeds,
                 Path(args.out) if args.out else None, jobs=args.jobs, quiet=args.quiet)
    if not args.quiet:
        from flexpl.cli.sweep import print_table
        from flexpl.io.console import fmt, make_console, table

        console = make_console()
        print_table(console, t.out, t.cells)  # every cell of the grid, as flexpl sweep prints it
        console.print(table("tune: validation accuracy after the last round, mean over seeds (* = chosen)",
                            ["strategy", *t.keys, "val_accuracy_mean", "val_accuracy_std", "diverged"],
                            ([("* " if r["chosen"] else "  ") + r["strategy"], *(str(r[k]) for k in t.keys),
                              fmt(r["val_accuracy_mean"]), fmt(r["val_accuracy_std"]), str(r["diverged"])]
                             for r in t.rows)))
        console.print(f"chosen values in {t.out}/tuned.yaml (flexpl compare --tuned {t.out}/tuned.yaml); "
                      f"table in {t.out}/tune.csv")
    track_results(t.out, trackers)  # one parent run, a child per cell (and seed)
    return 0
