"""``flexpl tune``: per strategy, the grid setting with the best validation accuracy, mean over seeds.

    flexpl tune edge-fmnist --strategies fl,sl --grid training.optimizer.lr=0.005,0.02,0.05 --seeds 0,1

Every (strategy, setting, seed) is one cell of a :mod:`flexpl.studies.sweep` grid (one folder per
cell, resumable, ``--jobs``). Each cell trains with ``data.validation_fraction`` of every data
node's samples held out (0.1 when the scenario holds out none) and with the test set switched
off (``training.eval_test: false``): the choice reads only ``final_val_accuracy``, the
validation accuracy after the last round, so the test set is never used to choose. A cell
whose training diverges scores below any that did not. Ties go to the setting listed first.

Writes ``tuned.yaml`` (``{strategy: {key: value}}``, what ``flexpl compare --tuned`` applies
as ``strategy_overrides``) and ``tune.csv`` (one row per strategy and setting: mean and
standard deviation of the validation accuracy over seeds, how many seeds diverged, which
setting was chosen).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flexpl.errors import UserError

DEFAULT_VALIDATION_FRACTION = 0.1


@dataclass
class Tuning:
    """What :func:`run_tune` found: the folder, the chosen values, ``tune.csv``'s rows and the grid behind them."""

    out: Path
    tuned: dict[str, dict[str, Any]]  # {strategy: {key: value}}, as in tuned.yaml
    rows: list[dict[str, Any]]  # tune.csv: one per strategy and setting
    keys: list[str]  # the keys of the tuned fields (--grid), in order
    cells: list[Any]  # every (strategy, setting, seed) cell of the sweep (flexpl.studies.grid.Cell)


def tuned_sets(path: str | Path) -> list[str]:
    """``--set`` items that add a ``tuned.yaml``'s values as ``strategy_overrides`` (what ``compare --tuned`` does)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"--tuned: cannot read '{path}': {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(f"--tuned: '{path}' must map each strategy to its values, e.g. "
                        "{sl: {training.optimizer.lr: 0.01}} (what flexpl tune writes)")
    return [f"strategy_overrides.{s}.{k}={json.dumps(v)}" for s, vals in data.items() for k, v in vals.items()]


def _score(summary: dict[str, Any] | None) -> float:
    """A cell's validation accuracy after the last round; -inf for a diverged or missing cell."""
    if not summary or summary.get("diverged"):
        return -math.inf
    v = summary.get("final_val_accuracy")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


def choose(cells: list[tuple[str, tuple[tuple[str, str], ...], int, dict[str, Any] | None]],
           ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Pick, per strategy, the setting with the best mean validation accuracy over seeds.

    ``cells``: (strategy, setting as ((key, raw value), ...), seed, summary or None), in grid
    order. Returns ``tuned`` ({strategy: {key: value}}) and the rows of ``tune.csv``.
    """
    groups: dict[tuple[str, tuple], list[float]] = {}
    for strategy, setting, _, summary in cells:
        groups.setdefault((strategy, setting), []).append(_score(summary))
    rows, best = [], {}
    for (strategy, setting), scores in groups.items():
        ok = [s for s in scores if s > -math.inf]
        mean = statistics.fmean(scores) if len(ok) == len(scores) else -math.inf
        row = {"strategy": strategy, **dict(setting),
               "val_accuracy_mean": mean if len(ok) == len(scores) else float("nan"),
               "val_accuracy_std": statistics.pstdev(ok) if len(ok) == len(scores) and ok else float("nan"),
               "seeds": len(scores), "diverged": len(scores) - len(ok), "chosen": False}
        rows.append(row)
        if strategy not in best or mean > best[strategy][0]:
            best[strategy] = (mean, setting, row)
    tuned = {}
    for strategy, (_, setting, row) in best.items():
        row["chosen"] = True
        tuned[strategy] = {k: yaml.safe_load(v) for k, v in setting}
    return tuned, rows


def run_tune(scenario: str | None, sets: list[str], strategies: list[str], grid: list[str], seeds: list[int] | None,
             out: Path | None, jobs: int = 1, quiet: bool = False) -> Tuning:
    """Run the tuning grid (through :func:`flexpl.studies.sweep.run_sweep`), write tuned.yaml and tune.csv."""
    from flexpl.config.scenario import load_scenario
    from flexpl.io.console import make_console
    from flexpl.io.results import write_csv, write_yaml
    from flexpl.plan.layout import PRESETS
    from flexpl.studies.grid import make_cells, parse_grid
    from flexpl.studies.sweep import run_sweep

    if not strategies:
        raise UserError("--strategies: give at least one strategy, e.g. --strategies fl,sl")
    for s in strategies:
        if s not in PRESETS:
            raise UserError(f"--strategies: unknown strategy '{s}'; allowed: {', '.join(PRESETS)}")
    axes = parse_grid(grid)
    for key, _ in axes:
        if key in ("strategy", "seed"):
            raise UserError(f"--grid {key}: use --{'strategies' if key == 'strategy' else 'seeds'} for that")
    scn = load_scenario(scenario, sets)
    seeds = seeds or [scn.seed]
    sets = list(sets)
    if scn.data.validation_fraction == 0:
        sets.append(f"data.validation_fraction={DEFAULT_VALIDATION_FRACTION}")
        make_console(quiet).print(f"tune: data.validation_fraction is 0 in this scenario; holding out "
                                  f"{DEFAULT_VALIDATION_FRACTION} of each data node's samples for validation")
    sets.append("training.eval_test=false")  # choose on validation data only: never evaluate on the test set
    full_grid = [f"strategy={','.join(strategies)}", *grid, f"seed={','.join(map(str, seeds))}"]
    out = run_sweep(scenario, sets, full_grid, None, out or Path(f"results/{scn.name}-tune"), jobs=jobs, quiet=quiet)
    cells = []
    every = make_cells(parse_grid(full_grid))
    for c in every:
        try:
            summary = json.loads((out / c.name / "summary.json").read_text())
        except (OSError, ValueError):
            summary = None
        setting = tuple((k, v) for k, v in c.values if k not in ("strategy", "seed"))
        cells.append((c.strategy or "", setting, int(dict(c.values)["seed"]), summary))
    tuned, rows = choose(cells)
    write_yaml(out / "tuned.yaml", tuned)
    write_csv(out / "tune.csv", rows)
    return Tuning(out, tuned, rows, [k for k, _ in axes], every)
