"""``flexpl sweep``: run a grid of scenario variants (resumable), print its table, build report.html."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flexpl.cli.common import (
    check_track,
    ray_argument,
    scenario_arguments,
    scenario_trackers,
    target_arguments,
    target_sets,
    track_argument,
    track_results,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scenario_arguments(parser)
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="one axis of the grid (repeatable); KEY 'strategy' picks the preset, any "
                             "other KEY is a --set dotted key, e.g. --grid data.partition.alpha=0.1,1.0")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="run cells in N worker processes (default 1); with --ray, the local Ray's CPUs")
    parser.add_argument("--seeds", default=None, metavar="K1,K2,...",
                        help="run every cell once per seed (into <cell>/seed<k>); sweep.csv then holds "
                             "mean ± std per cell (<column>_mean, <column>_std), sweep_seeds.csv every run")
    target_arguments(parser)
    ray_argument(parser, "each cell")
    track_argument(parser)


def main(args: argparse.Namespace) -> int:
    """flexpl sweep: run the grid, write sweep.csv, then build report.html in the sweep folder."""
    from flexpl.config.scenario import scenario_tracking
    from flexpl.report.html import maybe_report
    from flexpl.studies.grid import make_cells, parse_grid
    from flexpl.studies.seeds import parse_seeds
    from flexpl.studies.sweep import run_sweep

    trackers = check_track(args)
    trackers = scenario_trackers(scenario_tracking(args.scenario, list(args.set)), trackers)  # tracking:, then --track
    args.set = [*args.set, *target_sets(args)]
    seeds = parse_seeds(args.seeds)
    ray = args.ray
    jobs = 1 if args.jobs is None or ray is not None else args.jobs  # with --ray, --jobs sizes the local Ray
    out = run_sweep(args.scenario, args.set, args.grid, args.seed, Path(args.out) if args.out else None,
                    jobs=jobs, quiet=args.quiet, seeds=seeds, ray=ray, ray_cpus=args.jobs if ray is not None else None)
    if not args.quiet:
        from flexpl.io.console import make_console

        cells = make_cells(parse_grid(args.grid))
        if seeds is not None:
            print_seeds_table(make_console(), out, cells, seeds)
        else:
            print_table(make_console(), out, cells)
    maybe_report(out, args.quiet)  # one warning line if the report cannot be drawn here
    track_results(out, trackers)  # after every file is written: a tracker's failure loses nothing
    return 0


def print_table(console: Any, out: Path, cells: Sequence[Any]) -> None:
    """One row per finished cell (accuracy, bytes, energy, time), then the cost to reach each target."""
    from flexpl.cli.tables import targets_table
    from flexpl.io.console import fmt, table

    cols = ["final_accuracy", "bytes_total", "energy_j_total", "sim_time_s"]
    rows, with_targets = [], []
    for c in cells:
        try:
            s = json.loads((out / c.name / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        rows.append([c.name, *(fmt(s.get(k)) for k in cols)])
        if s.get("to_target"):
            with_targets.append({**s, "strategy": c.name})
    console.print(table(f"sweep: {len(cells)} cells", ["cell", *cols], rows))
    if with_targets:
        console.print(targets_table(with_targets))
    console.print(f"sweep table in {out}/sweep.csv")


def print_seeds_table(console: Any, out: Path, cells: Sequence[Any], seeds: Sequence[int]) -> None:
    """One row per cell over its seeds (mean ± std), as sweep.csv holds them."""
    from flexpl.cli.tables import seeds_table
    from flexpl.studies.sweep import write_sweep_seeds_csv

    aggs = write_sweep_seeds_csv(out, cells, seeds)
    console.print(seeds_table(aggs, f"sweep: {len(cells)} cells x seeds {','.join(map(str, seeds))} "
                                    "(mean ± sample std)", key="cell"))
    console.print(f"sweep table in {out}/sweep.csv (per seed: sweep_seeds.csv)")
