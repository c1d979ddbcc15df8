"""``flexpl scenarios``: list the built-in scenarios, or print one's YAML."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flexpl.errors import UserError


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--show", default=None, metavar="NAME|FILE",
                   help="print a built-in scenario's YAML, or a scenario file's; then the user code it imports")
    s.add_argument("--draw", nargs="?", const="", default=None, metavar="PNG",
                   help="with --show: draw the scenario's plan on its topology (tiers, bandwidths, blocks per node, "
                        "where replicas are averaged, bytes per link in round 1 by kind, as the planner walks it) "
                        "into PNG (default NAME-STRATEGY-plan.png)")
    s.add_argument("--strategy", default=None, help="with --draw: the preset to draw (default: the scenario's)")


def main(a: argparse.Namespace) -> int:
    """flexpl scenarios: list the built-in scenarios, or print one."""
    from importlib import resources

    from flexpl.config.load import builtin_scenarios
    from flexpl.config.scenario import scenario_user_code

    names = builtin_scenarios()
    if a.show:
        if a.show in names:
            text = resources.files("flexpl.scenarios").joinpath(f"{a.show}.yaml").read_text()
        elif Path(a.show).is_file():
            try:
                text = Path(a.show).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"scenarios --show: cannot read '{a.show}': {exc}; give a UTF-8 YAML file") from None
        else:
            raise UserError(f"scenarios --show: unknown scenario '{a.show}' (neither built-in nor a file); "
                            f"built-in: {', '.join(names)}")
        if a.draw is None:
            if a.strategy:
                raise UserError("--strategy: only with --draw (scenarios --show NAME --draw --strategy S)")
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            found = scenario_user_code(a.show)  # read from the YAML: nothing is imported here
            if found:
                sys.stdout.write("# user code this scenario imports (module:function):\n")
                sys.stdout.writelines(f"#   {field}: {path}\n" for field, path in found)
            else:
                sys.stdout.write("# user code this scenario imports: none\n")
            return 0
        from flexpl.config.scenario import load_scenario
        from flexpl.report.plan_picture import draw, picture_of_scenario

        scn = load_scenario(a.show, [], a.strategy, None)
        stem = a.show if a.show in names else Path(a.show).stem
        path = a.draw or f"{stem}-{scn.strategy}-plan.png"
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
