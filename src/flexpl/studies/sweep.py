"""``flexpl sweep``: run a Cartesian grid of scenario variants, one folder per cell, resumably.

    flexpl sweep digits-star --grid strategy=fl,fpl --grid data.partition.alpha=0.1,1.0

Each ``--grid KEY=V1,V2,...`` adds one axis (:mod:`flexpl.studies.grid` parses them into
cells). Every cell runs into its own folder, named from its grid values
(``strategy=fl__data.partition.alpha=0.1``), through the same
:func:`flexpl.studies.run_one.run_one` as ``flexpl run``.

Resuming: a cell counts as done when its ``summary.json`` exists (``run_one`` writes it
last) *and* records the digest of the scenario this command would run, so rerunning the
same command skips finished cells and redoes unfinished or changed ones. ``sweep.csv`` is
rebuilt from the cells' ``summary.json`` files after every cell, so it never holds
duplicate or stale rows. ``--jobs N`` runs cells in N worker processes; ``--ray [ADDRESS]``
runs each cell as a Ray task instead, on a local Ray or a cluster (see :mod:`flexpl.studies.ray_tasks`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flexpl.costs.targets import target_columns
from flexpl.errors import UserError
from flexpl.studies.grid import Cell, make_cells, parse_grid, seed_cells


def _check_cells(scenario: str | None, sets: Sequence[str], seed: int | None,
                 cells: Sequence[Cell], imports: bool = True) -> dict[str, tuple[str, int, str]]:
    """Load every cell's scenario before running any, so a bad value fails at once.

    Returns cell name -> (scenario digest, rounds, scenario name). With ``imports`` false,
    user code the scenario names is checked for spelling only and not imported (deciding
    which cells are finished must not run anyone's code).
    """
    import contextlib

    from flexpl.config.scenario import load_scenario
    from flexpl.io.user_code import user_code_unchecked
    from flexpl.plan.layout import PRESETS

    out = {}
    for c in cells:
        label = " ".join(f"{k}={v}" for k, v in c.values)
        try:
            with contextlib.nullcontext() if imports else user_code_unchecked():
                scn = load_scenario(scenario, [*sets, *c.sets], c.strategy, seed)
        except UserError as exc:
            raise UserError(f"--grid {label}: {exc}") from None
        if scn.strategy not in PRESETS and not (scn.plan and scn.plan.stages):
            raise UserError(f"--grid {label}: unknown strategy '{scn.strategy}'; allowed: "
                            f"{', '.join(PRESETS)} (or give plan.stages)")
        out[c.name] = (scn.digest(), scn.training.rounds, scn.name)
    return out


def is_finished(folder: Path, digest: str) -> bool:
    """Whether ``folder`` holds a finished run of exactly this scenario (and of its config.yaml)."""
    from flexpl.io.results import stale_reason

    try:
        s = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return s.get("scenario_sha256") == digest and stale_reason(folder, s) is None


def _init_worker() -> None:
    import torch

    # N workers on N cores: one intra-op thread each avoids oversubscribing the CPU, and no
    # run forks worker processes of its own (see flexpl.sim.exec.policy.WORKERS_ENV).
    torch.set_num_threads(1)
    os.environ["FLEXPL_WORKERS"] = "1"


def _run_cell(scenario: str | None, sets: Sequence[str], strategy: str | None, seed: int | None,
              out: Path) -> dict[str, Any]:
    """Run one cell into ``out`` (in this process or a worker); returns its summary."""
    from flexpl.errors import Diverged
    from flexpl.io.lock import hold_folder
    from flexpl.studies import run_one as runs

    try:
        with hold_folder(out, "flexpl sweep cell", field=f"sweep cell {out.name}"):  # never run twice at once
            return runs.run_one(scenario, list(sets), strategy, seed, out, quiet=True, label=out.name,
                                show_data=False)
    except Diverged as exc:  # a result of the grid, not a failure of the sweep: its summary says "diverged"
        return dict(exc.summary or {"diverged": str(exc)})


def write_sweep_csv(out: Path, cells: Sequence[Cell], digests: dict[str, str] | None = None
                    ) -> list[dict[str, Any]]:
    """Rebuild ``sweep.csv`` from the finished cells' summary.json (one row per cell, grid order).

    A summary counts only if it is the result of its folder's config.yaml and, with
    ``digests`` (cell name -> scenario digest), of the scenario this sweep runs there.
    """

    rows = []
    for c in cells:
        s = _valid_summary(out, c.name, digests)
        if s is not None:
            rows.append(_summary_row({"cell": c.name, **dict(c.values)}, s))
    _write_cell_rows(out / "sweep.csv", rows, cells)
    return rows


def _valid_summary(out: Path, name: str, digests: dict[str, str] | None) -> dict[str, Any] | None:
    """``out/name/summary.json`` if it is the result of its folder's config.yaml (and of ``digests[name]``)."""
    from flexpl.io.results import stale_reason

    try:
        s = json.loads((out / name / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if stale_reason(out / name, s) or (digests and s.get("scenario_sha256") != digests.get(name)):
        return None
    return s


def _summary_row(head: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """``head``, then the summary's flat fields, then its cost-to-target columns (bytes_to_0.7, ...)."""
    row = dict(head)
    row.update({k: v for k, v in s.items() if not isinstance(v, dict) and k not in row})
    row.update(target_columns(s.get("to_target")))  # empty where a target was not reached
    return row


def _write_cell_rows(path: Path, rows: list[dict[str, Any]], cells: Sequence[Cell]) -> None:
    """Write ``rows`` with the cell and grid columns first, then every other column in order of appearance."""
    from flexpl.io.results import write_csv

    columns = ["cell", *(k for k, _ in cells[0].values)] if cells else None
    if columns:
        for r in rows:
            columns.extend(k for k in r if k not in columns)
    write_csv(path, rows, columns)


def write_sweep_seeds_csv(out: Path, cells: Sequence[Cell], seeds: Sequence[int],
                          digests: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Rebuild ``sweep_seeds.csv`` (one row per cell and seed) and ``sweep.csv`` (one row per cell, over seeds).

    A cell's row in ``sweep.csv`` aggregates its finished seeds with
    :func:`flexpl.studies.seeds.aggregate_seeds` (``<column>_mean``, ``<column>_std``, ``seeds``). A seed's
    summary counts only as :func:`write_sweep_csv` says (its folder's config, and ``digests``).
    """
    from flexpl.io.results import write_csv
    from flexpl.studies.seeds import SEED_DIR, aggregate_seeds, device_energy

    per_seed: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for c in cells:
        mine = []
        for k in seeds:
            name = f"{c.name}/{SEED_DIR.format(k)}"
            s = _valid_summary(out, name, digests)
            if s is None:
                continue
            row = _summary_row({"cell": c.name, **dict(c.values), "seed": k}, s)
            nodes = _data_nodes(out / name)
            if nodes:
                row["device_energy_j_total"] = device_energy(s, nodes)
            mine.append(row)
        per_seed.extend(mine)
        if mine:
            agg = aggregate_seeds([{k: v for k, v in r.items() if k != "cell" and k not in dict(c.values)}
                                   for r in mine])
            rows.append({"cell": c.name, **dict(c.values), **agg})
    write_csv(out / "sweep_seeds.csv", per_seed)
    _write_cell_rows(out / "sweep.csv", rows, cells)
    return rows


def _data_nodes(folder: Path) -> list[str]:
    """The data-holding nodes of the run in ``folder`` (from its config.yaml), or [] if unreadable."""
    import yaml

    try:
        cfg = yaml.safe_load((folder / "config.yaml").read_text()) or {}
        return [n["name"] for n in cfg.get("nodes") or [] if n.get("holds_data")]
    except (OSError, yaml.YAMLError, TypeError, KeyError, AttributeError):
        return []


def _count_rounds(folder: Path) -> int:
    try:
        with open(folder / "rounds.csv") as f:
            return max(sum(1 for _ in f) - 1, 0)
    except OSError:
        return 0


class _RoundWatcher:
    """Polls the running cells' rounds.csv so the progress bar can show rounds within a cell.

    run_one writes rounds.csv after every round, in this process or a worker; reading it
    from a thread keeps the runner itself unaware of the progress display.
    """

    def __init__(self, progress: Any, out: Path) -> None:
        self.progress, self.out = progress, out
        self.tasks: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def add(self, name: str, rounds: int) -> None:
        with self.lock:
            self.tasks[name] = self.progress.add_task(f"  {name}", total=rounds, info="")

    def remove(self, name: str) -> None:
        with self.lock:
            task = self.tasks.pop(name, None)
        if task is not None:
            self.progress.remove_task(task)

    def _loop(self) -> None:
        if self.progress.disable:  # --quiet: nothing to show, so do not poll
            return
        while not self.stop.wait(0.25):
            with self.lock:
                items = list(self.tasks.items())
            for name, task in items:
                self.progress.update(task, completed=_count_rounds(self.out / name))

    def __enter__(self) -> _RoundWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def run_sweep(scenario: str | None, sets: Sequence[str], grid: Sequence[str], seed: int | None,
              out: Path | None, jobs: int = 1, quiet: bool = False,
              on_cell: Callable[[Cell, dict[str, Any] | None], None] | None = None,
              seeds: Sequence[int] | None = None, ray: str | None = None,
              ray_cpus: int | None = None) -> Path:
    """Run every unfinished cell of the grid into ``out``; return the sweep folder.

    ``on_cell(cell, summary)`` is called after each cell (``summary`` is None for a skipped,
    already finished cell). With ``seeds``, every cell runs once per seed into
    ``<cell>/seed<k>`` (each such run is a resumable unit of its own) and ``sweep.csv``
    holds mean ± std per cell. With ``ray`` (an address, or "" for a local Ray with
    ``ray_cpus`` CPUs, default every core) every cell runs as a Ray task; ``jobs`` is then unused.
    """
    from flexpl.io.console import make_console, progress
    from flexpl.io.lock import hold_folder
    from flexpl.io.results import prepare_out_dir, write_yaml

    if jobs < 1:
        raise UserError(f"--jobs: must be at least 1, got {jobs}")
    if ray is not None:
        from flexpl.studies import ray_tasks as ray_exec

        ray_exec.require(ray, ray_cpus)  # one line before any work: a bad address, or Ray not installed
    axes = parse_grid(grid)
    cells = make_cells(axes)
    base_cells = cells
    if seeds is not None:
        if seed is not None:
            raise UserError("--seeds: give either --seed or --seeds, not both")
        if any(k == "seed" for k, _ in axes):
            raise UserError("--seeds: the grid already varies 'seed'; drop --grid seed=... or --seeds")
        cells = seed_cells(cells, seeds)
    checked = _check_cells(scenario, sets, seed, cells, imports=False)  # finished cells import nothing
    out = prepare_out_dir(out or f"results/{checked[cells[0].name][2]}-sweep")
    with hold_folder(out, "flexpl sweep"):  # a second command into this folder is refused
        meta = {"scenario": scenario, "set": list(sets), "seed": seed,
                "grid": {k: v for k, v in axes}, "cells": [c.name for c in cells]}
        if seeds is not None:
            meta["seeds"] = list(seeds)
        write_yaml(out / "sweep.yaml", meta)

        digests = {name: d for name, (d, _, _) in checked.items()}

        def rebuild_csv() -> None:  # one row per cell, or per cell over its seeds
            if seeds is not None:
                write_sweep_seeds_csv(out, base_cells, seeds, digests)
            else:
                write_sweep_csv(out, cells, digests)
        todo = [c for c in cells if not is_finished(out / c.name, checked[c.name][0])]
        _check_cells(scenario, sets, seed, todo)  # the cells to run, with their user code: fails before any runs
        console = make_console(quiet)
        if len(todo) < len(cells):
            console.print(f"sweep: {len(cells) - len(todo)} of {len(cells)} cells already finished in {out}/; "
                          "running the rest")
        rebuild_csv()
        for c in cells:
            if c not in todo and on_cell:
                on_cell(c, None)

        with progress(quiet, console) as bar, _RoundWatcher(bar, out) as watch:
            overall = bar.add_task("cells", total=len(cells), completed=len(cells) - len(todo), info="")

            def done(c: Cell, summary: dict[str, Any]) -> None:
                watch.remove(c.name)
                rebuild_csv()  # after every cell, so an interrupted sweep keeps its rows
                acc = summary.get("final_accuracy")
                bar.update(overall, advance=1,
                                info=f"last: {c.name}" + (f"  acc {acc:.4f}" if isinstance(acc, float) else ""))
                if on_cell:
                    on_cell(c, summary)

            def failed(c: Cell, exc: UserError) -> UserError:
                return UserError(f"sweep cell {c.name}: {exc}")

            if ray is not None:
                _run_ray(scenario, sets, seed, out, todo, checked, watch, done, failed, ray, ray_cpus)
            elif jobs == 1:
                for c in todo:
                    watch.add(c.name, checked[c.name][1])
                    try:
                        summary = _run_cell(scenario, [*sets, *c.sets], c.strategy, seed, out / c.name)
                    except UserError as exc:
                        raise failed(c, exc) from None
                    done(c, summary)
            else:
                _run_parallel(scenario, sets, seed, out, todo, jobs, checked, watch, done, failed)
    return out


def _run_parallel(scenario: str | None, sets: Sequence[str], seed: int | None, out: Path,
                  todo: Sequence[Cell], jobs: int, checked: dict[str, tuple[str, int, str]],
                  watch: _RoundWatcher, done: Callable, failed: Callable) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn, not fork: forking a process that may already hold torch's thread pools can hang.
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)) or 1, mp_context=ctx,
                               initializer=_init_worker)
    try:
        pending = {}
        for c in todo:
            pending[pool.submit(_run_cell, scenario, [*sets, *c.sets], c.strategy, seed, out / c.name)] = c
            watch.add(c.name, checked[c.name][1])
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                c = pending.pop(fut)
                try:
                    summary = fut.result()
                except UserError as exc:
                    raise failed(c, exc) from None
                done(c, summary)
    finally:
        # On an error or Ctrl-C, drop queued cells; running ones finish or die with the pool.
        pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(scenario: str | None, sets: Sequence[str], seed: int | None, out: Path,
             todo: Sequence[Cell], checked: dict[str, tuple[str, int, str]], watch: _RoundWatcher,
             done: Callable, failed: Callable, address: str, num_cpus: int | None) -> None:
    """Run the cells in ``todo`` as Ray tasks (each asks for its scenario's ``engine.workers`` CPUs, default 1).

    A task runs :func:`_run_cell` into the cell's folder, as a ``--jobs`` worker does, so the
    folder, its summary and the digest check are the same; ``done`` rebuilds sweep.csv and
    advances the progress bar in this process as each task finishes.
    """
    from flexpl.config.scenario import load_scenario
    from flexpl.studies import ray_tasks as ray_exec

    if not todo:
        return
    # a Ray worker need not share this process's working directory: give it absolute paths
    where = str(Path(scenario).resolve()) if scenario and Path(scenario).is_file() else scenario
    root = out.resolve()
    by_name = {c.name: c for c in todo}
    tasks = [ray_exec.Task(c.name, _run_cell, (where, [*sets, *c.sets], c.strategy, seed, root / c.name),
                           load_scenario(scenario, [*sets, *c.sets], c.strategy, seed).engine.workers or 1)
             for c in todo]

    def finished(name: Any, summary: dict[str, Any]) -> None:
        if not (out / name).is_dir():  # ran on a node whose file system this machine does not see
            raise UserError(f"--ray: cell {name} finished on a Ray node but {out / name} is not here; "
                            "give --out a folder every node shares (e.g. on NFS)")
        done(by_name[name], summary)

    with ray_exec.session(address, num_cpus) as ray:
        for c in todo:
            watch.add(c.name, checked[c.name][1])
        try:
            ray_exec.run_tasks(ray, tasks, finished)
        except ray_exec.TaskError as exc:
            raise failed(by_name[exc.key], exc) from None
