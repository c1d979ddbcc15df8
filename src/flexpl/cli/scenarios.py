"""``flexpl scenarios``: list the built-in scenarios, or print one's YAML."""

from __future__ import annotations

import argparse
import sys

from flexpl.errors import UserError


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--show", default=None, metavar="NAME", help="print one scenario's YAML")
    s.add_argument("--draw", nargs="?", const="", default=None, metavar="PNG",
                   help="with --show: draw the scenario's plan on its topology (tiers, bandwidths, blocks per node, "
                        "where replicas are averaged, bytes per link in round 1 by kind, as the planner walks it) "
                        "into PNG (default NAME-STRATEGY-plan.png)")
    s.add_argument("--strategy", default=None, help="with --draw: the preset to draw (default: the scenario's)")


def main(a: argparse.Namespace) -> int:
    """flexpl scenarios: list the built-in scenarios, or print one."""
    from importlib import resources

    from flexpl.config.load import builtin_scenarios

    names = builtin_scenarios()
    if a.show:
        if a.show not in names:
            raise UserError(f"scenarios --show: unknown scenario '{a.show}'; built-in: {', '.join(names)}")
        if a.draw is None:
            if a.strategy:
                raise UserError("--strategy: only with --draw (scenarios --show NAME --draw --strategy S)")
            sys.stdout.write(resources.files("flexpl.scenarios").joinpath(f"{a.show}.yaml").read_text())
            return 0
        from flexpl.config.scenario import load_scenario
        from flexpl.report.plan_picture import draw, picture_of_scenario

        scn = load_scenario(a.show, [], a.strategy, None)
        path = a.draw or f"{a.show}-{scn.strategy}-plan.png"
        data = draw(picture_of_scenario(scn))
        with open(path, "wb") as f:
            f.write(data)
        print(path)
        return 0
    if a.draw is not None:
        raise UserError("--draw: give the scenario too (scenarios --show NAME --draw)")
    for n, desc in names.items():
        print(f"{n:16s} {desc}")
    return 0
