"""``flexpl compare``: several strategies on the same scenario, data and seed (or seeds); one table, one report."""

from __future__ import annotations

import argparse

from flexpl.cli.common import (
    DEFAULT_STRATEGIES,
    check_track,
    device_arguments,
    names,
    ray_argument,
    scenario_arguments,
    scenario_trackers,
    target_arguments,
    target_sets,
    track_argument,
    track_results,
)
from flexpl.errors import UserError


def add_arguments(c: argparse.ArgumentParser) -> None:
    scenario_arguments(c)
    c.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                   help=f"comma-separated presets (default: {DEFAULT_STRATEGIES})")
    c.add_argument("--tuned", default=None, metavar="TUNED_YAML",
                   help="apply each strategy's values chosen by flexpl tune (its tuned.yaml)")
    c.add_argument("--seeds", default=None, metavar="K1,K2,...",
                   help="run every strategy once per seed (into <strategy>/seed<k>) and report mean ± std")
    c.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="with --ray and no ADDRESS: the local Ray's CPUs (default every core)")
    ray_argument(c, "each strategy (each strategy and seed with --seeds)")
    target_arguments(c)
    track_argument(c)
    device_arguments(c)


def main(a: argparse.Namespace) -> int:
    """flexpl compare: several strategies on the same scenario, data and seed."""
    from flexpl.config.scenario import load_scenario
    from flexpl.io.console import make_console
    from flexpl.io.results import prepare_out_dir
    from flexpl.plan.layout import PRESETS
    from flexpl.report.html import maybe_report
    from flexpl.studies.seeds import parse_seeds

    if a.tuned:  # each strategy's chosen values, as strategy_overrides (flexpl tune)
        from flexpl.studies.tune import tuned_sets

        a.set = [*a.set, *tuned_sets(a.tuned)]
    trackers = check_track(a)
    a.set = [*a.set, *target_sets(a)]
    strategies = names(a.strategies)
    for s in strategies:
        if s not in PRESETS:
            raise UserError(f"--strategies: unknown strategy '{s}'; allowed: {', '.join(PRESETS)}")
    scn = load_scenario(a.scenario, a.set, None, a.seed)
    trackers = scenario_trackers(scn.tracking, trackers)  # the scenario's tracking:, then --track
    seeds = parse_seeds(a.seeds)
    if seeds is not None and a.seed is not None:
        raise UserError("--seeds: give either --seed or --seeds, not both")
    if a.ray is not None:  # one line before any work: a bad address or --jobs, or Ray not installed
        from flexpl.io.ray_cluster import require

        require(a.ray, a.jobs)
    elif a.jobs is not None:
        raise UserError("--jobs: compare runs its strategies one after another; --jobs sizes the local Ray "
                        "of --ray (add --ray, or drop --jobs)")
    out = prepare_out_dir(a.out or f"results/{scn.name}-compare")
    from flexpl.io.lock import hold_folder

    with hold_folder(out, "flexpl compare"):  # a second command into this folder is refused
        if seeds is not None:  # several seeds: one folder per seed, mean +- std (flexpl.studies.seeds)
            from flexpl.cli.tables import seeds_table
            from flexpl.studies.compare import compare_seeds

            aggs = compare_seeds(a.scenario, a.set, strategies, seeds, scn.data_nodes, out, a.quiet, a.ray, a.jobs)
            if not a.quiet:
                c = make_console()
                c.print(seeds_table(aggs, f"{scn.name}: {scn.training.rounds} rounds, seeds "
                                          f"{','.join(map(str, seeds))} (mean ± sample std)"))
                c.print(f"comparison in {out}/comparison.csv (per seed: comparison_seeds.csv)")
        else:
            from flexpl.cli.tables import summary_table, targets_table
            from flexpl.studies.compare import compare

            summaries = compare(a.scenario, a.set, strategies, a.seed, out, a.quiet, a.ray, a.jobs)
            if not a.quiet:
                c = make_console()
                c.print(summary_table(summaries, f"{scn.name}: {scn.training.rounds} rounds, seed {scn.seed}"))
                if any(s.get("to_target") for s in summaries):
                    c.print(targets_table(summaries))
                c.print(f"comparison in {out}/comparison.csv")
        maybe_report(out, a.quiet)
        track_results(out, trackers)
    return 0
