"""What the commands share: the parser that turns argparse's errors into one line, and the
arguments several commands take (the scenario and its overrides, cost-to-target, ``--ray``)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, NoReturn

from flexpl.errors import UserError
from flexpl.io.ray_cluster import LOCAL

DEFAULT_STRATEGIES = "centralized,fl,sl,sfl,mp,fpl"  # what compare runs and tune tunes without --strategies


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one :class:`UserError` line (exit 2), not usage and a message."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (see --help)")


def scenario_arguments(p: argparse.ArgumentParser) -> None:
    """The scenario and ``--set``, ``--seed``, ``--out``, ``--quiet`` (run, compare, sweep, tune, plan)."""
    p.add_argument("scenario", nargs="?", default=None, help="built-in scenario name or YAML file (default: edge-fmnist)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set training.rounds=3 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    p.add_argument("--no-user-code", action="store_true",
                   help="refuse a scenario that names Python code to import (model/dataset factory, loss, "
                        "aggregator); FLEXPL_NO_USER_CODE=1 does the same")


def announce_user_code(args: argparse.Namespace) -> None:
    """Print which modules and functions the scenario will import (one line, unless ``--quiet``)."""
    from flexpl.config.scenario import scenario_user_code

    scenario = args.scenario
    resume = getattr(args, "resume", None)
    if scenario is None and resume:
        scenario = str(Path(resume) / "config.yaml")
    found = scenario_user_code(scenario, list(args.set))
    if found and not args.quiet:
        print("flexpl: this scenario imports user code: " + ", ".join(f"{f}={p}" for f, p in found)
              + " (--no-user-code refuses it)")


def target_arguments(parser: argparse.ArgumentParser) -> None:
    """``--target-accuracy A`` (repeatable) and ``--stop-at-target`` for run, compare and sweep."""
    parser.add_argument("--target-accuracy", action="append", type=float, default=None, metavar="A",
                        help="report the round and cumulative costs at which test accuracy first reaches A "
                             "(repeatable; replaces the scenario's evaluation.targets)")
    parser.add_argument("--stop-at-target", action="store_true",
                        help="stop each run after the round in which it reaches its highest target")


def device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision`` (run, compare): where the simulator computes, and in which precision."""
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="auto, cpu, cuda or cuda:N: where replicas, evaluation and aggregation run "
                             "(engine.device; auto: CUDA when there is one); the bill does not change")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                        help="compute precision (training.precision); weights and activations stay fp32 on the wire")


def target_sets(args: argparse.Namespace) -> list[str]:
    """The ``--set`` items that ``--target-accuracy`` / ``--stop-at-target`` (and ``--device``,
    ``--precision``) stand for (checked here)."""
    sets: list[str] = []
    if getattr(args, "device", None) is not None:
        sets.append(f"engine.device={args.device}")
    if getattr(args, "precision", None) is not None:
        sets.append(f"training.precision={args.precision}")
    targets = getattr(args, "target_accuracy", None)
    if targets:
        for a in targets:
            if not (math.isfinite(a) and 0.0 < a <= 1.0):
                raise UserError(f"--target-accuracy: a target accuracy is in (0, 1], got {a:g}; "
                                "e.g. --target-accuracy 0.7")
        if len(set(targets)) != len(targets):
            raise UserError("--target-accuracy: the same target is given twice; give each accuracy once")
        sets.append("evaluation.targets=[" + ",".join(repr(float(a)) for a in targets) + "]")
    if getattr(args, "stop_at_target", False):
        sets.append("evaluation.stop_at_target=true")
    return sets


def ray_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--ray [ADDRESS]`` to ``parser``; ``what`` says what runs as Ray tasks (for --help)."""
    parser.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                        help=f"run {what} as a Ray task (pip install 'flexpl[ray]'): alone, on a local Ray "
                             "with --jobs CPUs (default every core); with ADDRESS (auto, HOST:PORT, "
                             "ray://HOST:PORT), on that cluster, which must see --out")


def names(raw: str) -> list[str]:
    """``"fl, sl,"`` -> ``["fl", "sl"]``: a comma-separated list such as ``--strategies``."""
    return [s.strip() for s in raw.split(",") if s.strip()]


def track_argument(parser: argparse.ArgumentParser) -> None:
    """``--track tensorboard[:DIR] | mlflow[:URI]`` (repeatable): log the finished results to a tracker."""
    parser.add_argument("--track", action="append", default=[], metavar="KIND[:WHERE]",
                        help="after the run, log its rounds, bill, parameters and files to an experiment tracker: "
                             "tensorboard[:DIR] (default DIR: OUT/tensorboard) or mlflow[:URI] (default: "
                             "MLFLOW_TRACKING_URI or ./mlruns); repeatable, added to the scenario's tracking: "
                             "list; needs flexpl[track]")


def check_track(args: argparse.Namespace) -> list[Any]:
    """The parsed ``--track`` values, checked before any work (a bad one is one line, exit 2)."""
    from flexpl.report.track import parse_track

    return parse_track(getattr(args, "track", None))


def scenario_trackers(tracking: list[str] | None, trackers: list[Any]) -> list[Any]:
    """The scenario's ``tracking:`` entries merged with the command line's ``--track`` (each tracker once)."""
    from flexpl.report.track import merge_trackers

    return merge_trackers(tracking, trackers)


def track_results(out: Any, trackers: list[Any]) -> None:
    """Log the finished folder ``out`` to ``trackers``; a tracker's failure is a warning line, never an error."""
    if trackers:
        from flexpl.report.track import track_folder

        track_folder(out, trackers)
