"""The ``flexpl`` command line: :func:`main` and :func:`build_parser`; each command is a module here.

    flexpl run | compare | sweep | report | tune | plan | calibrate | worker | scenarios

Every command module (``cli/run.py``, ``cli/compare.py``, ...) has ``add_arguments(parser)``
and ``main(args) -> int``: it reads its flags, calls the library and prints the results.
They import the heavy parts (torch, ray, matplotlib) inside ``main``, so ``flexpl --help``
stays quick. A user error prints one line on stderr and exits 2; a training that diverges
(a non-finite loss) exits 3; an internal error exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flexpl.cli import calibrate, compare, plan, report, run, scenarios, sweep, tune, worker
from flexpl.cli.common import Parser
from flexpl.errors import UserError, WorkerFailure

# The commands in the order --help lists them: (name, module, help).
COMMANDS = [
    ("run", run, "train one scenario and report its costs"),
    ("compare", compare, "run several strategies on the same scenario"),
    ("sweep", sweep, "run a grid of scenario variants (resumable)"),
    ("report", report, "build report.html from a results folder"),
    ("tune", tune, "choose each strategy's hyper-parameters on validation data (writes tuned.yaml)"),
    ("plan", plan, "predict the costs of many plans without training and recommend one"),
    ("calibrate", calibrate, "measure this machine's FLOP/s and write a device profile"),
    ("worker", worker, "one rank of a distributed run (what torchrun starts)"),
    ("scenarios", scenarios, "list built-in scenarios"),
]


def build_parser() -> argparse.ArgumentParser:
    """The ``flexpl`` argument parser."""
    from flexpl import __version__

    p = Parser(prog="flexpl", description="Flexible parallel learning: simulate, run and plan "
               "data/model-parallel training over devices, edge and cloud, with exact costs.")
    p.add_argument("--version", action="version", version=f"flexpl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, module, helptext in COMMANDS:
        c = sub.add_parser(name, help=helptext)
        module.add_arguments(c)
        c.set_defaults(func=module.main)
    return p


def _call(args: argparse.Namespace) -> int:
    """Run the command, refusing user code where ``--no-user-code`` asks or the command only reads results."""
    import contextlib

    from flexpl.cli.common import announce_user_code
    from flexpl.io.user_code import forbid_user_code

    guard: contextlib.AbstractContextManager = contextlib.nullcontext()
    if getattr(args, "no_user_code", False):
        guard = forbid_user_code("--no-user-code is given")
    elif args.command == "report":
        guard = forbid_user_code("flexpl report reads results and never imports code")
    if hasattr(args, "scenario") and hasattr(args, "no_user_code"):
        announce_user_code(args)
    with guard:
        return int(args.func(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 on success, 2 on a user error (one line on stderr), 1 on an internal error.

    Run as the ``flexpl`` command (``argv`` None: the process's own arguments), the process
    does without ``torch._dynamo`` (:mod:`flexpl.io.lean`); a caller passing ``argv`` keeps torch as it is.
    """
    if argv is None:
        from flexpl.io.lean import spare_dynamo

        spare_dynamo()
    try:
        args = build_parser().parse_args(argv)
        return _call(args)
    except WorkerFailure as exc:  # a rank or Ray actor died, hung or failed: one line, exit 3
        print(f"flexpl: error: {exc}", file=sys.stderr)
        return 3
    except UserError as exc:
        print(f"flexpl: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # training diverged (a non-finite loss): one line, exit 3, rounds so far kept
        from flexpl.errors import Diverged

        if not isinstance(exc, Diverged):
            raise
        print(f"flexpl: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("flexpl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
