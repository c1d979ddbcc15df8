"""``flexpl scenarios``: list the built-in scenarios, or print one's YAML."""

from __future__ import annotations

import argparse
import sys

from flexpl.errors import UserError


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--show", default=None, metavar="NAME", help="print one scenario's YAML")


def main(a: argparse.Namespace) -> int:
    """flexpl scenarios: list the built-in scenarios, or print one."""
    from importlib import resources

    from flexpl.config.load import builtin_scenarios

    names = builtin_scenarios()
    if a.show:
        if a.show not in names:
            raise UserError(f"scenarios --show: unknown scenario '{a.show}'; built-in: {', '.join(names)}")
        sys.stdout.write(resources.files("flexpl.scenarios").joinpath(f"{a.show}.yaml").read_text())
        return 0
    for n, desc in names.items():
        print(f"{n:16s} {desc}")
    return 0
