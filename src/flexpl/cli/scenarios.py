"""``flexpl scenarios``: list the built-in scenarios, or print one's YAML."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flexpl.errors import UserError


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--show", default=None, metavar="NAME|FILE",
                   help="print a built-in scenario's YAML, or a scenario file's; then the user code it imports")


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
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        found = scenario_user_code(a.show)  # read from the YAML: nothing is imported here
        if found:
            sys.stdout.write("# user code this scenario imports (module:function):\n")
            sys.stdout.writelines(f"#   {field}: {path}\n" for field, path in found)
        else:
            sys.stdout.write("# user code this scenario imports: none\n")
        return 0
    for n, desc in names.items():
        print(f"{n:16s} {desc}")
    return 0
