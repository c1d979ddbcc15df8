"""``flexpl report DIR``: build DIR/report.html from a run, compare or sweep folder (:mod:`flexpl.report.html`);
with ``--format latex|markdown|csv``, the comparison table for a paper instead (:mod:`flexpl.report.paper`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="a run, compare or sweep folder")
    parser.add_argument("--format", default=None, choices=("latex", "markdown", "csv"),
                        help="write the comparison table (mean ± std over seeds, best per column in bold, "
                             "units in the header) to DIR/table.tex|md|csv and print it, instead of report.html")


def main(args: argparse.Namespace) -> int:
    """flexpl report: build DIR/report.html and print its path (or, with --format, the paper table)."""
    if args.format:
        import sys

        from flexpl.report.paper import write_paper_table

        path, text = write_paper_table(args.dir, args.format)
        sys.stdout.write(text)
        print(f"table in {path}", file=sys.stderr)
        return 0
    from flexpl.report.html import build_report

    print(build_report(args.dir))
    return 0
