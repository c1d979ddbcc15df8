"""``flexpl report DIR``: build DIR/report.html from a run, compare or sweep folder (:mod:`flexpl.report.html`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="a run, compare or sweep folder")


def main(args: argparse.Namespace) -> int:
    """flexpl report: build DIR/report.html and print its path."""
    from flexpl.report.html import build_report

    print(build_report(args.dir))
    return 0
