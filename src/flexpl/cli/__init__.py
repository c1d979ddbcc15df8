"""Command line: ``flexpl run | compare | scenarios`` (and more as they land).

Thin on purpose: load the scenario, build the plan, run the engine, write the results.
User errors print one line on stderr and exit 2; internal errors exit 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from flexpl.costs.targets import add_target_arguments, target_columns, target_sets
from flexpl.costs.targets import rich_table as targets_table
from flexpl.errors import UserError
from flexpl.io.console import fmt, make_console

# Names that moved out of the CLI (nothing below it imports it), still answered here for
# old callers; imported on first use, so ``flexpl --help`` stays quick.
_MOVED = {"run_one": ("flexpl.studies.run_one", "run_one"), "timeline_rows": ("flexpl.io.results", "timeline_rows"),
          "SUMMARY_COLUMNS": ("flexpl.io.results", "SUMMARY_COLUMNS"),
          "_summary_table": ("flexpl.studies.run_one", "summary_table"), "_data_table": ("flexpl.studies.run_one", "data_table"),
          "_seeds_table": ("flexpl.studies.seeds", "seeds_table"), "_maybe_report": ("flexpl.report.html", "maybe_report")}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        module, attr = _MOVED[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'flexpl.cli' has no attribute '{name}'")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        raise UserError(f"{self.prog}: {message} (see --help)")


_console = make_console  # kept for callers of the old names
_fmt = fmt


def cmd_run(a: argparse.Namespace) -> int:
    """flexpl run: one scenario, one strategy."""
    from flexpl.config.scenario import DEFAULT_SCENARIO, load_scenario

    scenario = a.scenario
    a.set = [*a.set, *target_sets(a)]
    if a.resume:
        out = Path(a.resume)
        if a.out and Path(a.out) != out:
            raise UserError("--resume: the run continues in its own folder; drop --out or give the same path")
        if scenario is None:  # the stopped run's resolved scenario
            if not (out / "config.yaml").exists():
                raise UserError(f"--resume: '{out}' holds no config.yaml; give the scenario too")
            scenario = str(out / "config.yaml")
    scn = load_scenario(scenario, a.set, a.strategy, a.seed)
    if not a.resume:
        out = Path(a.out or f"results/{scn.name}-{scn.strategy}")
    if getattr(a, "emulate_links", False) and (a.backend or scn.engine.backend) != "dist":
        raise UserError("--emulate-links: runs the dist backend only; add --backend dist")
    if getattr(a, "emulate_profile", None) and not getattr(a, "emulate_links", False):
        raise UserError("--emulate-profile: only used with --emulate-links; add --emulate-links")
    if (a.backend or scn.engine.backend) == "dist":  # one process per node: flexpl.dist.backend
        from flexpl.dist.backend import WorkerFailure, run_dist

        if getattr(a, "resume", None):
            raise UserError("--resume: the dist backend cannot resume a run; use --backend sim")
        if scn.evaluation.stop_at_target:
            raise UserError("--stop-at-target: the dist backend cannot stop at a target; use --backend sim "
                            "(--target-accuracy alone works)")
        if a.timeout is not None and a.timeout <= 0:
            raise UserError(f"--timeout: must be a positive number of seconds, got {a.timeout:g}")
        from flexpl.costs.memory import check_fits

        check_fits(scn)
        try:
            if getattr(a, "emulate_links", False):  # namespaces + HTB: flexpl.dist.emulate.links
                from flexpl.dist.emulate.links import run_emulated

                s = run_emulated(scn, out, a.timeout, a.quiet, a.emulate_profile)
            else:
                s = run_dist(scn, out, a.timeout, a.quiet)
        except WorkerFailure as exc:  # a worker died, hung or failed: one line, exit 3
            print(f"flexpl: error: {exc}", file=sys.stderr)
            return 3
    else:
        from flexpl.studies import run_one as runs

        s = runs.run_one(scenario or DEFAULT_SCENARIO, a.set, a.strategy, a.seed, out, a.quiet,
                         resume=bool(a.resume))
    if not a.quiet:
        from flexpl.studies.run_one import summary_table

        c = _console()
        c.print(summary_table([s], f"{s['scenario']}: {s['rounds']} rounds"))
        if s.get("to_target"):
            c.print(targets_table([s]))
        c.print(f"results in {out}/ (summary.json, rounds.csv, config.yaml)")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    """flexpl compare: several strategies on the same scenario, data and seed."""
    from flexpl.config.scenario import load_scenario
    from flexpl.io.results import prepare_out_dir, write_csv
    from flexpl.plan.layout import PRESETS
    from flexpl.report.html import maybe_report
    from flexpl.studies import run_one as runs

    if getattr(a, "tuned", None):  # each strategy's chosen values, as strategy_overrides (flexpl tune)
        from flexpl.studies.tune import tuned_sets

        a.set = [*a.set, *tuned_sets(a.tuned)]
    a.set = [*a.set, *target_sets(a)]
    strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    for s in strategies:
        if s not in PRESETS:
            raise UserError(f"--strategies: unknown strategy '{s}'; allowed: {', '.join(PRESETS)}")
    scn = load_scenario(a.scenario, a.set, None, a.seed)
    seeds = _parse_seeds(getattr(a, "seeds", None), a.seed)
    a.ray = getattr(a, "ray", None)
    a.jobs = getattr(a, "jobs", None)
    if a.ray is not None:  # one line before any work: a bad address or --jobs, or Ray not installed
        from flexpl.studies import ray_tasks as ray_exec

        ray_exec.require(a.ray, a.jobs)
    elif a.jobs is not None:
        raise UserError("--jobs: compare runs its strategies one after another; --jobs sizes the local Ray "
                        "of --ray (add --ray, or drop --jobs)")
    out = prepare_out_dir(a.out or f"results/{scn.name}-compare")
    if seeds is not None:  # several seeds: one folder per seed, mean +- std (flexpl.studies.seeds)
        return _compare_seeds(a, strategies, seeds, scn, out)
    from flexpl.studies.compare import Job, run_jobs

    summaries = run_jobs(a.scenario, a.set, [Job(s, a.seed, out / s, f"[{i + 1}/{len(strategies)}] {s}", i == 0)
                                             for i, s in enumerate(strategies)], a.quiet, a.ray, a.jobs)
    rows = [{k: v for k, v in s.items() if not isinstance(v, dict)} for s in summaries]
    for row, s in zip(rows, summaries):  # bytes_to_0.7, ... (flexpl.costs.targets)
        row.update(target_columns(s.get("to_target")))
    write_csv(out / "comparison.csv", rows)
    if not a.quiet:
        c = _console()
        c.print(runs.summary_table(summaries, f"{scn.name}: {scn.training.rounds} rounds, seed {scn.seed}"))
        if any(s.get("to_target") for s in summaries):
            c.print(targets_table(summaries))
        c.print(f"comparison in {out}/comparison.csv")
    maybe_report(out, a.quiet)
    return 0


def _parse_seeds(raw: str | None, seed: int | None) -> list[int] | None:
    from flexpl.studies.seeds import parse_seeds

    seeds = parse_seeds(raw)
    if seeds is not None and seed is not None:
        raise UserError("--seeds: give either --seed or --seeds, not both")
    return seeds


def _compare_seeds(a: argparse.Namespace, strategies: list[str], seeds: list[int], scn: Any, out: Path) -> int:
    """compare --seeds: every strategy once per seed into ``out/<strategy>/seed<k>``, then mean +- std.

    A seed's run already finished in its folder (same scenario digest) is reused, so adding a
    seed to the list runs only the new one.
    """
    import json

    from flexpl.config.scenario import load_scenario
    from flexpl.io.results import write_csv
    from flexpl.report.html import maybe_report
    from flexpl.studies.compare import Job, run_jobs
    from flexpl.studies.seeds import SEED_DIR, aggregate_seeds, device_energy, seeds_table
    from flexpl.studies.sweep import is_finished

    per_seed: list[dict[str, Any]] = []
    aggs: list[dict[str, Any]] = []
    n = len(strategies) * len(seeds)
    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for i, s in enumerate(strategies):
        for j, k in enumerate(seeds):
            folder = out / s / SEED_DIR.format(k)
            if is_finished(folder, load_scenario(a.scenario, a.set, s, k).digest()):  # resumable, as sweep
                summaries[(s, k)] = json.loads((folder / "summary.json").read_text())
            else:
                todo.append(Job(s, k, folder, f"[{i * len(seeds) + j + 1}/{n}] {s} seed {k}", i == 0 and j == 0))
    for job, summ in zip(todo, run_jobs(a.scenario, a.set, todo, a.quiet, a.ray, a.jobs)):
        summaries[(job.strategy, job.seed)] = summ  # type: ignore[index]
    for s in strategies:
        rows = []
        for k in seeds:
            summ = summaries[(s, k)]
            row = {"strategy": s, "seed": k, **{c: v for c, v in summ.items()
                                                if not isinstance(v, dict) and c not in ("strategy", "seed")}}
            row["device_energy_j_total"] = device_energy(summ, scn.data_nodes)
            row.update(target_columns(summ.get("to_target")))  # bytes_to_0.7, ... (empty: not reached)
            rows.append(row)
        per_seed.extend(rows)
        aggs.append({"strategy": s, **aggregate_seeds(rows)})
    write_csv(out / "comparison_seeds.csv", per_seed)
    write_csv(out / "comparison.csv", aggs)
    if not a.quiet:
        c = _console()
        c.print(seeds_table(aggs, f"{scn.name}: {scn.training.rounds} rounds, seeds "
                                   f"{','.join(map(str, seeds))} (mean ± sample std)"))
        c.print(f"comparison in {out}/comparison.csv (per seed: comparison_seeds.csv)")
    maybe_report(out, a.quiet)
    return 0


def cmd_scenarios(a: argparse.Namespace) -> int:
    """flexpl scenarios: list the built-in scenarios, or print one."""
    from importlib import resources

    from flexpl.config.scenario import builtin_scenarios

    names = builtin_scenarios()
    if a.show:
        if a.show not in names:
            raise UserError(f"scenarios --show: unknown scenario '{a.show}'; built-in: {', '.join(names)}")
        sys.stdout.write(resources.files("flexpl.scenarios").joinpath(f"{a.show}.yaml").read_text())
        return 0
    for n, desc in names.items():
        print(f"{n:16s} {desc}")
    return 0


# Subcommands that live in their own modules: each module defines
# ``add_arguments(parser)`` and ``main(args) -> int``.
PLUGINS: list[tuple[str, str, str]] = [
    ("sweep", "flexpl.studies.sweep", "run a grid of scenario variants (resumable)"),
    ("report", "flexpl.report.html", "build report.html from a results folder"),
    ("tune", "flexpl.studies.tune", "choose each strategy's hyper-parameters on validation data (writes tuned.yaml)"),
    ("plan", "flexpl.planner", "predict the costs of many plans without training and recommend one"),
    ("calibrate", "flexpl.system.calibrate", "measure this machine's FLOP/s and write a device profile"),
    ("worker", "flexpl.dist.backend", "one rank of a distributed run (what torchrun starts)"),
]


def _add_plugin(sub, name: str, module: str, helptext: str) -> None:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    p = sub.add_parser(name, help=helptext)
    if name in ("sweep", "plan", "tune"):
        _common(p)
    mod.add_arguments(p)
    p.set_defaults(func=mod.main)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", default=None, help="built-in scenario name or YAML file (default: edge-fmnist)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set training.rounds=3 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar or tables")


def build_parser() -> argparse.ArgumentParser:
    """The ``flexpl`` argument parser."""
    p = _Parser(prog="flexpl", description="Flexible parallel learning: simulate, run and plan "
                "data/model-parallel training over devices, edge and cloud, with exact costs.")
    from flexpl import __version__

    p.add_argument("--version", action="version", version=f"flexpl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="train one scenario and report its costs")
    _common(r)
    r.add_argument("--strategy", default=None, help="preset: centralized, fl, sl, sfl, mp, fpl, fpl-features, fpl-sync, fpl-group")
    r.add_argument("--resume", default=None, metavar="DIR", help="continue a stopped run from DIR/checkpoint.pt")
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
    add_target_arguments(r)
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("compare", help="run several strategies on the same scenario")
    _common(c)
    c.add_argument("--strategies", default="centralized,fl,sl,sfl,mp,fpl",
                   help="comma-separated presets (default: centralized,fl,sl,sfl,mp,fpl)")
    c.add_argument("--tuned", default=None, metavar="TUNED_YAML",
                   help="apply each strategy's values chosen by flexpl tune (its tuned.yaml)")
    c.add_argument("--seeds", default=None, metavar="K1,K2,...",
                   help="run every strategy once per seed (into <strategy>/seed<k>) and report mean ± std")
    c.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="with --ray and no ADDRESS: the local Ray's CPUs (default every core)")
    from flexpl.studies import ray_tasks as ray_exec

    ray_exec.add_argument(c, "each strategy (each strategy and seed with --seeds)")
    add_target_arguments(c)
    c.set_defaults(func=cmd_compare)
    for name, module, helptext in PLUGINS:
        _add_plugin(sub, name, module, helptext)
    s = sub.add_parser("scenarios", help="list built-in scenarios")
    s.add_argument("--show", default=None, metavar="NAME", help="print one scenario's YAML")
    s.set_defaults(func=cmd_scenarios)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 on success, 2 on a user error (one line on stderr), 1 on an internal error."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"flexpl: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # training diverged (a non-finite loss): one line, exit 3, rounds so far kept
        from flexpl.sim.engine import Diverged

        if not isinstance(exc, Diverged):
            raise
        print(f"flexpl: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("flexpl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
