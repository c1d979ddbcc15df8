"""Command line: ``flexpl run | compare | scenarios`` (and more as they land).

Thin on purpose: load the scenario, build the plan, run the engine, write the results.
User errors print one line on stderr and exit 2; internal errors exit 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from flexpl.errors import UserError
from flexpl.targets import add_target_arguments, target_columns, target_sets
from flexpl.targets import rich_table as targets_table

SUMMARY_COLUMNS = ["strategy", "final_accuracy", "accuracy_min", "accuracy_ensemble", "bytes_total",
                   "energy_j_total", "sim_time_s", "flops_total", "params_total", "wall_s"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        raise UserError(f"{self.prog}: {message} (see --help)")


def _console(quiet: bool = False):
    import os

    from rich.console import Console

    width = None if sys.stderr.isatty() else int(os.environ.get("COLUMNS", "150"))
    return Console(stderr=True, quiet=quiet, highlight=False, width=width)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10**6:
        return f"{v:.3e}"
    return str(v)


def _data_table(st) -> Any:
    from rich.table import Table

    t = Table(title=f"data: {st.scn.data.dataset}, partition {st.scn.data.partition.kind}", title_justify="left")
    for c in ("node", "samples", "label entropy (bits)", "labels"):
        t.add_column(c)
    shown = 16  # a thousand devices would fill the screen: the first ones, then a count
    for name, s in list(zip(st.scn.data_nodes, st.parts_summary))[:shown]:
        hist = s["histogram"]
        t.add_row(name, str(s["samples"]), f"{s['entropy_bits']:.2f}", " ".join(str(h) for h in hist))
    if len(st.parts_summary) > shown:
        t.add_row(f"... {len(st.parts_summary) - shown} more", "", "", "")
    return t


def run_one(scenario: str | None, sets: Sequence[str], strategy: str | None, seed: int | None,
            out: Path, quiet: bool, label: str = "", show_data: bool = True,
            resume: bool = False) -> dict[str, Any]:
    """Run one scenario on the simulator into ``out`` with a progress bar; returns the summary.

    The run state is checkpointed in ``out`` after every round; ``resume`` continues from it.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flexpl.config import load_scenario
    from flexpl.engine.simulator import run, setup
    from flexpl.results import prepare_out_dir, write_csv, write_run, write_yaml

    scn = load_scenario(scenario, list(sets), strategy, seed)
    out = prepare_out_dir(out)
    console = _console(quiet)
    st = setup(scn)
    if show_data:
        console.print(_data_table(st))
        ex = st.executor
        console.print(f"executor: {ex.mode}" + (f" ({ex.workers} workers)" if ex.mode == "processes" else "")
                      + f" -- {ex.reason}")
    rows: list[dict[str, Any]] = []
    write_yaml(out / "config.yaml", scn.resolved())
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                  disable=quiet, transient=False) as progress:
        task = progress.add_task(label or f"{scn.name} / {st.plan.name}", total=scn.training.rounds, info="")

        def on_round(row: dict[str, Any]) -> None:
            rows.append(row)
            write_csv(out / "rounds.csv", rows)  # rounds completed so far survive a crash
            progress.update(task, advance=1, info=f"acc {row['accuracy']:.4f}  bytes {row['bytes']:.3e}  "
                                                  f"t {row['sim_time_s']:.1f}s")

        result = run(scn, on_round=on_round, st=st, keep_traces=True, checkpoint_dir=out, resume=resume)
    if result.traces:  # the last round on the virtual clock: what the report's timeline draws
        write_csv(out / "timeline.csv", timeline_rows(*result.traces[-1], round_index=len(result.rounds)))
    write_run(out, result.summary, result.rounds, scn.resolved())  # summary.json last: marks a finished run
    return result.summary


def timeline_rows(trace, starts: list[float], ends: list[float], round_index: int) -> list[dict[str, Any]]:
    """One row per action of a round's trace: resource (node or link), kind, times, amount."""
    from flexpl.costs.trace import COMPUTE

    rows = []
    for i in range(len(trace)):
        compute = trace.kind[i] == COMPUTE
        rows.append({"round": round_index, "resource": trace.resource[i],
                     "resource_kind": "node" if compute else "link", "what": trace.what[i],
                     "label": trace.label[i], "src": trace.src[i], "dst": trace.dst[i],
                     "start_s": starts[i], "end_s": ends[i],
                     "flops": trace.amount[i] if compute else 0, "bytes": 0 if compute else trace.amount[i]})
    return rows


def _summary_table(summaries: list[dict[str, Any]], title: str) -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in SUMMARY_COLUMNS:
        t.add_column(c, justify="right" if c != "strategy" else "left")
    for s in summaries:
        t.add_row(*(_fmt(s.get(c)) for c in SUMMARY_COLUMNS))
    return t


def cmd_run(a: argparse.Namespace) -> int:
    """flexpl run: one scenario, one strategy."""
    from flexpl.config import DEFAULT_SCENARIO, load_scenario

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
    if (a.backend or scn.engine.backend) == "dist":  # one process per node: flexpl.engine.dist
        from flexpl.engine.dist import WorkerFailure, run_dist

        if getattr(a, "resume", None):
            raise UserError("--resume: the dist backend cannot resume a run; use --backend sim")
        if scn.evaluation.stop_at_target:
            raise UserError("--stop-at-target: the dist backend cannot stop at a target; use --backend sim "
                            "(--target-accuracy alone works)")
        if a.timeout is not None and a.timeout <= 0:
            raise UserError(f"--timeout: must be a positive number of seconds, got {a.timeout:g}")
        try:
            s = run_dist(scn, out, a.timeout, a.quiet)
        except WorkerFailure as exc:  # a worker died, hung or failed: one line, exit 3
            print(f"flexpl: error: {exc}", file=sys.stderr)
            return 3
    else:
        s = run_one(scenario or DEFAULT_SCENARIO, a.set, a.strategy, a.seed, out, a.quiet, resume=bool(a.resume))
    if not a.quiet:
        c = _console()
        c.print(_summary_table([s], f"{s['scenario']}: {s['rounds']} rounds"))
        if s.get("to_target"):
            c.print(targets_table([s]))
        c.print(f"results in {out}/ (summary.json, rounds.csv, config.yaml)")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    """flexpl compare: several strategies on the same scenario, data and seed."""
    from flexpl.config import load_scenario
    from flexpl.plan import PRESETS
    from flexpl.results import prepare_out_dir, write_csv

    a.set = [*a.set, *target_sets(a)]
    strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    for s in strategies:
        if s not in PRESETS:
            raise UserError(f"--strategies: unknown strategy '{s}'; allowed: {', '.join(PRESETS)}")
    scn = load_scenario(a.scenario, a.set, None, a.seed)
    out = prepare_out_dir(a.out or f"results/{scn.name}-compare")
    summaries = []
    for i, s in enumerate(strategies):
        summaries.append(run_one(a.scenario, a.set, s, a.seed, out / s, a.quiet,
                                 label=f"[{i + 1}/{len(strategies)}] {s}", show_data=i == 0))
    rows = [{k: v for k, v in s.items() if not isinstance(v, dict)} for s in summaries]
    for row, s in zip(rows, summaries):  # bytes_to_0.7, ... (flexpl.targets)
        row.update(target_columns(s.get("to_target")))
    write_csv(out / "comparison.csv", rows)
    if not a.quiet:
        c = _console()
        c.print(_summary_table(summaries, f"{scn.name}: {scn.training.rounds} rounds, seed {scn.seed}"))
        if any(s.get("to_target") for s in summaries):
            c.print(targets_table(summaries))
        c.print(f"comparison in {out}/comparison.csv")
    _maybe_report(out, a.quiet)
    return 0


def _maybe_report(out: Path, quiet: bool) -> None:
    try:
        from flexpl.report import build_report
    except ImportError:
        return
    path = build_report(out)
    if not quiet:
        _console().print(f"report: {path}")


def cmd_scenarios(a: argparse.Namespace) -> int:
    """flexpl scenarios: list the built-in scenarios, or print one."""
    from importlib import resources

    from flexpl.config import builtin_scenarios

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
    ("sweep", "flexpl.sweep", "run a grid of scenario variants (resumable)"),
    ("report", "flexpl.report", "build report.html from a results folder"),
    ("plan", "flexpl.planner", "predict the costs of many plans without training and recommend one"),
    ("calibrate", "flexpl.calibrate", "measure this machine's FLOP/s and write a device profile"),
    ("worker", "flexpl.engine.dist", "one rank of a distributed run (what torchrun starts)"),
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
    if name in ("sweep", "plan"):
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
    r.add_argument("--strategy", default=None, help="preset: centralized, fl, sl, sfl, mp, fpl, fpl-features")
    r.add_argument("--resume", default=None, metavar="DIR", help="continue a stopped run from DIR/checkpoint.pt")
    r.add_argument("--backend", choices=["sim", "dist"], default=None,
                   help="sim: in-process simulator; dist: one process per node over torch.distributed "
                        "(default: the scenario's engine.backend)")
    r.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="dist backend: how long a worker waits for a peer (default: engine.timeout_s)")
    add_target_arguments(r)
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("compare", help="run several strategies on the same scenario")
    _common(c)
    c.add_argument("--strategies", default="centralized,fl,sl,sfl,mp,fpl",
                   help="comma-separated presets (default: centralized,fl,sl,sfl,mp,fpl)")
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
    except KeyboardInterrupt:
        print("flexpl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
