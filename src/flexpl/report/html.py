"""``flexpl report DIR``: one self-contained ``report.html`` from a run, compare or sweep folder.

The report only reads what runs wrote (summary.json, rounds.csv, timeline.csv,
config.yaml); it never reruns anything. Figures are drawn with matplotlib's Agg canvas,
saved beside the report as ``fig_<name>.png`` and embedded in the HTML as base64 data
URIs, so the page needs no network, no JavaScript and no external CSS:

1. accuracy vs round; 2. accuracy vs cumulative energy; 3. vs cumulative bytes;
4. Pareto front of final accuracy vs total energy; 5. vs total bytes;
6. energy per node (compute, communication, idle); 7. bytes per link;
8. the last round on the virtual clock (one row per node and link, bars coloured by action);
9. accuracy as step curves against cumulative bytes, energy and simulated time, with the
   accuracy targets drawn, beside the table "cost to reach each target" (flexpl.report.targets).

Runs are found as DIR itself when it holds summary.json, else every folder at most two
levels below DIR that holds one (a compare folder's strategies, a sweep's cells).

This module assembles the page (``flexpl report`` is :mod:`flexpl.cli.report`); its parts live beside it:
:mod:`flexpl.report.runs` reads the runs, :mod:`flexpl.report.plots` draws the figures,
:mod:`flexpl.report.tables` writes the HTML tables.
"""

from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path

from flexpl.errors import UserError
from flexpl.report import targets as report_targets
from flexpl.report.plots import MAX_TIMELINES, make_figures
from flexpl.report.runs import Run, load_runs, seed_groups_of
from flexpl.report.tables import _configs, _img, _seeds_html_table, _table

# ---------------------------------------------------------------- HTML

_CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --accent:#3056d3; --best:#e6f4ea; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--fg); background:#f6f7f9; }
main { max-width:1200px; margin:0 auto; padding:28px 28px 60px; }
header h1 { margin:0 0 4px; font-size:26px; letter-spacing:-0.01em; }
header .sub { color:var(--muted); margin:0; }
nav { margin:14px 0 6px; display:flex; flex-wrap:wrap; gap:6px; }
nav a { color:var(--accent); text-decoration:none; padding:3px 10px; border:1px solid var(--line);
        border-radius:999px; background:#fff; font-size:13px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:16px 20px;
          margin:18px 0; }
section h2 { margin:0 0 10px; font-size:18px; }
p.note { color:var(--muted); margin:6px 0 0; font-size:13px; }
figure { margin:8px 0; }
figure img { max-width:100%; height:auto; display:block; }
figcaption { color:var(--muted); font-size:12.5px; margin-top:4px; }
.pair { display:grid; grid-template-columns:1fr 1fr; gap:14px; }
@media (max-width: 900px) { .pair { grid-template-columns:1fr; } }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; font-size:12.5px; font-variant-numeric:tabular-nums; }
th, td { padding:5px 9px; border-bottom:1px solid var(--line); text-align:right; white-space:nowrap; }
th { background:#f2f4f7; position:sticky; top:0; font-weight:600; }
th:first-child, td:first-child { text-align:left; }
tbody tr:nth-child(even) td { background:#fafbfc; }
td.best { background:var(--best) !important; font-weight:600; }
.swatch { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:6px; }
dl.common { display:flex; flex-wrap:wrap; gap:4px 18px; margin:12px 0 0; font-size:12.5px; }
dl.common div { display:flex; gap:6px; } dl.common dt { color:var(--muted); } dl.common dd { margin:0; }
details { border:1px solid var(--line); border-radius:8px; margin:8px 0; padding:6px 12px; }
details summary { cursor:pointer; font-weight:600; }
pre { background:#f6f8fa; border-radius:6px; padding:10px 12px; overflow-x:auto; font-size:12px;
      line-height:1.4; max-height:480px; }
footer { color:var(--muted); font-size:12px; text-align:center; margin-top:24px; }
"""


def _kind(root: Path) -> str:
    if (root / "summary.json").is_file():
        return "single run"
    if (root / "sweep.csv").is_file():
        return "sweep"
    if (root / "comparison.csv").is_file():
        return "comparison"
    return "runs"


def render_html(root: Path, runs: list[Run], pngs: dict[str, bytes], fronts: dict[str, list[int]]) -> str:
    """The whole report page as one string (figures inline as data URIs)."""
    import yaml

    e = html.escape
    scenarios = sorted({str(r.summary.get("scenario", "?")) for r in runs})
    versions = sorted({str(r.summary.get("flexpl_version", "?")) for r in runs})
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    sub = (f"{e(_kind(root))} of {len(runs)} run{'s' if len(runs) != 1 else ''} · scenario "
           f"{e(', '.join(scenarios))} · {e(str(root.resolve()))} · flexpl {e(', '.join(versions))} · {now}")
    grid = ""
    try:
        sweep = yaml.safe_load((root / "sweep.yaml").read_text()) or {}
        if isinstance(sweep.get("grid"), dict):
            grid = "Grid: " + "; ".join(f"{k} = {', '.join(map(str, v))}" for k, v in sweep["grid"].items())
    except (OSError, yaml.YAMLError):
        pass

    def names(front: list[int]) -> str:
        return ", ".join(runs[i].label for i in front) or "none"

    cap = {
        "accuracy_vs_round": "Headline test accuracy (sample-weighted over node paths) after each round.",
        "accuracy_vs_energy": "Each point is a round; x is the energy spent so far (compute + communication).",
        "accuracy_vs_bytes": "Each point is a round; x is every byte that has crossed a node boundary so far.",
        "pareto_energy": f"Up and to the left is better. Non-dominated: {names(fronts['energy'])}; "
                         "grey runs are beaten on both axes by some other run.",
        "pareto_bytes": f"Up and to the left is better. Non-dominated: {names(fronts['bytes'])}.",
        "energy_per_node": "Per node over the whole run; solid = compute, hatched = sending and receiving"
                           " (and dotted = idle, when the scenario counts it).",
        "bytes_per_link": "Bytes carried by each link over the whole run, both directions together.",
        "timeline": "The last round of each run: one row per node (black) and link (grey, italic), bars"
                    " coloured by action; empty stretches are waiting. The % on the right is how busy"
                    " each row is during the round. Very short actions are drawn slightly wider so"
                    " they stay visible.",
        "accuracy_to_target": report_targets.caption(runs),
    }
    missing = [r.label for r in runs if not r.timeline]
    hidden = [r.label for r in runs if r.timeline][MAX_TIMELINES:]
    tl_note = ""
    if missing:
        tl_note += f"<p class=\"note\">No timeline.csv for: {e(', '.join(missing))}.</p>"
    if hidden:
        tl_note += f"<p class=\"note\">Not drawn (first {MAX_TIMELINES} only): {e(', '.join(hidden))}.</p>"

    def fig(name: str) -> str:
        return _img(name, pngs[name], cap[name])

    sections = [
        ("summary", "Comparison", _table(runs, fronts)
         + '<p class="note">Best value per column shaded green. Costs are totals over the run on the '
           "virtual clock.</p>"),
        ("accuracy", "Accuracy", fig("accuracy_vs_round")
         + f'<div class="pair">{fig("accuracy_vs_energy")}{fig("accuracy_vs_bytes")}</div>'),
        ("targets", "Cost to reach each target", report_targets.targets_table(runs)
         + fig("accuracy_to_target")),
        ("pareto", "Trade-offs", f'<div class="pair">{fig("pareto_energy")}{fig("pareto_bytes")}</div>'),
        ("energy", "Energy per node", fig("energy_per_node")),
        ("network", "Network", fig("bytes_per_link")),
        ("timeline", "Timeline", fig("timeline") + tl_note),
        *([("plan", "The plan on the topology", "".join(
            _img(k, pngs[k], f"{k[len('plan_'):]}: the topology by tier with each link's bandwidth (up/down) and "
                 "duplex; the blocks each node runs and where replicas are averaged; the bytes that crossed each "
                 "link in the last round, by kind (raw data in red).") for k in pngs if k.startswith("plan_")))]
          if any(k.startswith("plan_") for k in pngs) else []),
        ("scenario", "Resolved scenario", _configs(runs)),
    ]
    groups = seed_groups_of(runs)
    if groups and "seeds_accuracy" in pngs:
        cap["seeds_accuracy"] = "Mean over seeds after each round; error bars are one sample std across seeds."
        cap["seeds_costs"] = ("Each point is a strategy (cell): mean over seeds, error bars one sample std on "
                              "both axes (costs vary with the seed's partition).")
        sections.insert(1, ("seeds", "Over seeds", _seeds_html_table(groups) + fig("seeds_accuracy")
                            + fig("seeds_costs")))
    nav = "".join(f'<a href="#{sid}">{e(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{e(title)}</h2>{content}</section>'
                   for sid, title, content in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>FlexPL report: {e(root.resolve().name)}</title><style>{_CSS}</style></head>"
            f"<body><main><header><h1>FlexPL report</h1><p class=\"sub\">{sub}</p>"
            + (f'<p class="sub">{e(grid)}</p>' if grid else "")
            + f"<nav>{nav}</nav></header>{body}"
            "<footer>Generated by flexpl report; self-contained, no network needed.</footer>"
            "</main></body></html>\n")


MAX_PLAN_PICTURES = 8


def plan_pictures(runs: list[Run]) -> dict[str, bytes]:
    """``plan_<label>`` -> PNG of :mod:`flexpl.report.plan_picture` for each strategy (cell): its first seed's
    run, the first :data:`MAX_PLAN_PICTURES` only; a run that cannot be drawn (no timeline.csv) is left out."""
    import re
    import sys

    from flexpl.report.plan_picture import draw, picture_of_run

    out: dict[str, bytes] = {}
    seen: set[str] = set()
    for r in runs:
        group = re.sub(r"/seed\d+$", "", r.name)
        if group in seen or len(out) >= MAX_PLAN_PICTURES or not (r.path / "timeline.csv").is_file():
            continue
        seen.add(group)
        try:
            out[f"plan_{re.sub(r'[^A-Za-z0-9_.=-]+', '_', r.label)}"] = draw(picture_of_run(r.path))
        except (UserError, OSError, KeyError, ValueError) as exc:
            print(f"flexpl: warning: report draws no plan picture for {r.name}: {exc}".splitlines()[0],
                  file=sys.stderr)
    return out


def build_report(root: str | Path) -> Path:
    """Write ``root/report.html`` (and ``root/fig_*.png``) for the runs under ``root``; return its path."""
    from flexpl.io.results import atomic_write

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"report: '{root}' is not a folder; give a run, compare or sweep folder")
    runs = load_runs(root)
    if not runs:
        raise UserError(f"report: no finished run in '{root}' (no summary.json in it or in its "
                        "subfolders); run flexpl run/compare/sweep first")
    pngs, fronts = make_figures(runs)
    pngs.update(plan_pictures(runs))
    for name, png in pngs.items():
        atomic_write(root / f"fig_{name}.png", png)
    path = root / "report.html"
    atomic_write(path, render_html(root, runs, pngs, fronts))
    return path


def maybe_report(out: Path, quiet: bool) -> None:
    """Build ``out/report.html`` after a compare or sweep; if it cannot be drawn here, say so in one warning line."""
    import sys

    try:
        path = build_report(out)
    except ImportError as exc:  # e.g. matplotlib missing: the results stand, only the report is lost
        print(f"flexpl: warning: no report.html in {out}/: {exc} (pip install matplotlib, then run "
              f"flexpl report {out})", file=sys.stderr)
        return
    if not quiet:
        from flexpl.io.console import make_console

        make_console().print(f"report: {path}")
