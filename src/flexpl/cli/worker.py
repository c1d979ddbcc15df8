"""``flexpl worker``: one rank of a distributed run, what torchrun starts (``-m flexpl.cli worker``).

The rank itself is :func:`flexpl.dist.worker.start_rank`; ``flexpl run --backend dist``
launches its workers without this parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flexpl.cli.common import Parser
from flexpl.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``flexpl worker`` (rank and world size come from torchrun's environment)."""
    p.add_argument("scenario", nargs="?", default=None, help="built-in scenario name or YAML file (default: edge-fmnist)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set training.rounds=3 (repeatable)")
    p.add_argument("--strategy", default=None, help="preset: centralized, fl, sl, sfl, mp, fpl, fpl-features")
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument("--out", default=None, help="output folder (written by rank 0)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for a peer before giving up (default: engine.timeout_s)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run stopped in --out from the checkpoint its ranks committed (OUT/checkpoint/)")
    p.add_argument("--status-dir", default=None, help=argparse.SUPPRESS)  # hidden: where the rank writes its status


def main(args: argparse.Namespace) -> int:
    """flexpl worker: one rank of a distributed run; exit 0, 2 (user error) or 3 (a peer failed)."""
    from flexpl.dist.worker import start_rank

    start_rank(args.scenario, args.set, args.strategy, args.seed, args.out, args.timeout, args.status_dir,
               args.resume)


def worker_main(argv: Sequence[str]) -> int:
    """``flexpl worker ARGV`` on its own parser (prog ``flexpl worker``), without building the whole CLI.

    A user error (bad argument, bad scenario, no ``RANK`` in the environment) prints one line
    and returns 2; other paths end in ``os._exit`` inside :func:`main`.
    """
    p = Parser(prog="flexpl worker", description="one rank of a distributed run")
    add_arguments(p)
    try:
        return main(p.parse_args(list(argv)))
    except UserError as exc:
        print(f"flexpl: error: {exc}", file=sys.stderr)
        return 2
