"""``flexpl run``: one scenario, one strategy, on the simulator or the dist backend; prints its costs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flexpl.cli.common import (
    check_track,
    device_arguments,
    scenario_arguments,
    scenario_trackers,
    target_arguments,
    target_sets,
    track_argument,
    track_results,
)
from flexpl.errors import UserError


def add_arguments(r: argparse.ArgumentParser) -> None:
    scenario_arguments(r)
    r.add_argument("--strategy", default=None, help="preset: centralized, fl, sl, sfl, mp, fpl, fpl-features, fpl-sync, fpl-group")
    r.add_argument("--resume", default=None, metavar="DIR",
                   help="continue a stopped run from its checkpoint in DIR (DIR/checkpoint.pt; dist backend: "
                        "DIR/checkpoint/)")
    r.add_argument("--backend", choices=["sim", "dist"], default=None,
                   help="sim: in-process simulator; dist: one process per node over torch.distributed "
                        "(default: the scenario's engine.backend)")
    r.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="dist backend: how long a worker waits for a peer (default: engine.timeout_s)")
    r.add_argument("--emulate-links", action="store_true",
                   help="dist backend, Linux + root: each node in its own network namespace, links shaped by the "
                        "kernel (HTB), compute profiles from flexpl calibrate; prints measured vs predicted times")
    r.add_argument("--emulate-profile", default=None, metavar="FILE",
                   help="with --emulate-links: device profile from `flexpl calibrate --threads 1` for every node "
                        "(default: calibrate this machine once and cache it)")
    r.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="train the run's clients in Ray actors (engine.executor=ray; pip install 'flexpl[ray]'): "
                        "alone, on a local Ray started for the run; with ADDRESS (auto, HOST:PORT, "
                        "ray://HOST:PORT), on that cluster (engine.ray_address). The bill is the sequential one")
    target_arguments(r)
    track_argument(r)
    device_arguments(r)


def main(a: argparse.Namespace) -> int:
    """flexpl run: one scenario, one strategy."""
    from flexpl.config.scenario import DEFAULT_SCENARIO, load_scenario

    scenario = a.scenario
    trackers = check_track(a)
    a.set = [*a.set, *target_sets(a), *ray_sets(a.ray)]
    if a.resume:
        out = Path(a.resume)
        if a.out and Path(a.out) != out:
            raise UserError("--resume: the run continues in its own folder; drop --out or give the same path")
        if scenario is None:  # the stopped run's resolved scenario
            if not (out / "config.yaml").exists():
                raise UserError(f"--resume: '{out}' holds no config.yaml; give the scenario too")
            scenario = str(out / "config.yaml")
    scn = load_scenario(scenario, a.set, a.strategy, a.seed)
    trackers = scenario_trackers(scn.tracking, trackers)  # the scenario's tracking:, then --track
    if not a.resume:
        out = Path(a.out or f"results/{scn.name}-{scn.strategy}")
    if a.emulate_links and (a.backend or scn.engine.backend) != "dist":
        raise UserError("--emulate-links: runs the dist backend only; add --backend dist")
    if a.emulate_profile and not a.emulate_links:
        raise UserError("--emulate-profile: only used with --emulate-links; add --emulate-links")
    from flexpl.io.lock import hold_folder

    with hold_folder(out, "flexpl run"):  # a second command into this folder is refused
        if (a.backend or scn.engine.backend) == "dist":  # one process per node: flexpl.dist
            from flexpl.dist.launch import run_dist
            from flexpl.dist.ranks import WorkerFailure

            if scn.evaluation.stop_at_target:
                raise UserError("--stop-at-target: the dist backend cannot stop at a target; use --backend sim "
                                "(--target-accuracy alone works)")
            if a.timeout is not None and a.timeout <= 0:
                raise UserError(f"--timeout: must be a positive number of seconds, got {a.timeout:g}")
            from flexpl.planner.memory import check_fits

            check_fits(scn)
            try:
                if a.emulate_links:  # namespaces + HTB: flexpl.dist.emulate.links
                    from flexpl.dist.emulate.links import run_emulated

                    s = run_emulated(scn, out, a.timeout, a.quiet, a.emulate_profile, resume=bool(a.resume))
                else:
                    s = run_dist(scn, out, a.timeout, a.quiet, resume=bool(a.resume))
            except WorkerFailure as exc:  # a worker died, hung or failed: one line, exit 3
                print(f"flexpl: error: {exc}", file=sys.stderr)
                return 3
        else:
            from flexpl.studies.run_one import run_one

            s = run_one(scenario or DEFAULT_SCENARIO, a.set, a.strategy, a.seed, out, a.quiet, resume=bool(a.resume))
    if not a.quiet:
        from flexpl.cli.tables import summary_table, targets_table
        from flexpl.io.console import make_console

        c = make_console()
        c.print(summary_table([s], f"{s['scenario']}: {s['rounds']} rounds"))
        if s.get("to_target"):
            c.print(targets_table([s]))
        c.print(f"results in {out}/ (summary.json, rounds.csv, config.yaml)")
    track_results(out, trackers)
    return 0


def ray_sets(address: str | None) -> list[str]:
    """The ``--set`` items ``--ray [ADDRESS]`` stands for; a bad or unreachable address, or a missing Ray,
    is a one-line error here, before any work."""
    if address is None:
        return []
    from flexpl.io.ray_cluster import require

    require(address)
    sets = ["engine.executor=ray"]
    if address and address != "local":
        sets.append(f'engine.ray_address="{address}"')
    return sets
