"""The report's HTML parts other than figures: the comparison table, the over-seeds table, configs, images.

Every value is escaped; :mod:`flexpl.report.html` puts these parts into the page.
"""

from __future__ import annotations

import base64
import html
import json
import math
from typing import Any

from flexpl.costs.targets import as_float
from flexpl.report.runs import Run, SeedGroup
from flexpl.report.style import fmt_value as _fmt
from flexpl.studies.seeds import aggregate_seeds, within_spread

# Summary columns where the best value is highlighted in the table: +1 maximise, -1 minimise.
BEST: dict[str, int] = {
    "final_accuracy": 1, "accuracy_min": 1, "accuracy_ensemble": 1, "final_loss": -1,
    "flops_total": -1, "bytes_total": -1, "sim_time_s": -1, "energy_j_total": -1,
    "energy_j_compute": -1, "energy_j_comm": -1, "params_total": -1,
}


def _flat(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if not isinstance(v, dict | list)}


def _table(runs: list[Run], fronts: dict[str, list[int]]) -> str:
    flats = [_flat(r.summary) for r in runs]
    keys: list[str] = []
    for f in flats:
        keys.extend(k for k in f if k not in keys)
    if len(runs) > 1:  # columns where every run agrees are listed once below the table
        varying = [k for k in keys if len({json.dumps(f.get(k)) for f in flats}) > 1]
        common = [k for k in keys if k not in varying]
    else:
        varying, common = keys, []
    e = html.escape
    head = "".join(f"<th>{e(k)}</th>" for k in ["run", *varying, "Pareto front"])
    best: dict[str, float] = {}
    for k in varying:
        vals = [as_float(f.get(k)) for f in flats]
        vals = [v for v in vals if math.isfinite(v)]
        if k in BEST and vals:
            best[k] = max(vals) if BEST[k] > 0 else min(vals)
    body = []
    for i, (r, f) in enumerate(zip(runs, flats)):
        cells = [f'<td><span class="swatch" style="background:{r.color}"></span>{e(r.label)}</td>']
        for k in varying:
            v = f.get(k)
            cls = ' class="best"' if k in best and as_float(v) == best[k] and len(runs) > 1 else ""
            cells.append(f'<td{cls} title="{e(str(v))}">{e(_fmt(k, v))}</td>')
        on = [name for name, front in fronts.items() if i in front]
        cells.append(f"<td>{e(', '.join(on)) or '–'}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    out = (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
           f'<tbody>{"".join(body)}</tbody></table></div>')
    if common:
        items = "".join(f'<div><dt>{e(k)}</dt><dd title="{e(str(flats[0].get(k)))}">'
                        f"{e(_fmt(k, flats[0].get(k)))}</dd></div>" for k in common)
        out += f'<p class="note">Same for every run:</p><dl class="common">{items}</dl>'
    return out


def _img(name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="fig-{name}"><img id="{name}" alt="{name}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _configs(runs: list[Run]) -> str:
    import yaml

    out = []
    for i, r in enumerate(runs):
        plan = r.summary.get("plan")
        plan_txt = yaml.safe_dump(plan, sort_keys=False, default_flow_style=None) if plan else ""
        body = f"<pre>{html.escape(r.config or '(no config.yaml)')}</pre>"
        if plan_txt:
            body += f"<p class=\"note\">plan as compiled</p><pre>{html.escape(plan_txt)}</pre>"
        out.append(f"<details{' open' if i == 0 else ''}><summary>{html.escape(r.label)} "
                   f"<span style=\"color:#667085;font-weight:400\">({html.escape(r.name)}/config.yaml)"
                   f"</span></summary>{body}</details>")
    return "".join(out)


def _seeds_html_table(groups: list[SeedGroup]) -> str:
    """Mean ± std over seeds of the headline columns; "≈" where a gap is within the spread."""
    aggs = [aggregate_seeds([_flat(r.summary) for r in g.runs]) for g in groups]
    marks = within_spread(aggs)
    cols = ["final_accuracy", "accuracy_min", "bytes_total", "energy_j_total", "sim_time_s", "params_total"]
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in ["run", "seeds", *cols])
    body = []
    for g, a, mark in zip(groups, aggs, marks):
        cells = [f'<td><span class="swatch" style="background:{g.color}"></span>{e(g.name)}</td>',
                 f"<td>{a.get('seeds', 0)}</td>"]
        for c in cols:
            m, sd = a.get(f"{c}_mean"), a.get(f"{c}_std")
            txt = "–" if m is None else f"{_fmt(c, m)} ± {_fmt(c, sd or 0.0) if 'accuracy' not in c else f'{sd:.4f}'}"
            if c == "final_accuracy" and mark:
                txt = "≈ " + txt
            cells.append(f"<td>{e(txt)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = ('<p class="note">Mean ± sample standard deviation (ddof = 1) over seeds. ≈: final accuracy '
            "within the larger std of the best run's, a difference these seeds cannot separate.</p>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            f"</table></div>{note}")
