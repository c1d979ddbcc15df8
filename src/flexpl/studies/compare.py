"""``flexpl compare``: several strategies on the same scenario, data and seed(s), into one folder.

:func:`compare` runs each strategy once and writes ``comparison.csv``; :func:`compare_seeds`
runs each once per seed and writes the mean ± std. The runs go one after another here, or
each as a Ray task (``--ray [ADDRESS]``).

Each run is ``runs.run_one`` into its own folder (``OUT/<strategy>``, or
``OUT/<strategy>/seed<k>`` with ``--seeds``), in this process or in a Ray worker that asks
for the scenario's CPUs (``engine.workers``, default 1), as ``flexpl sweep --ray`` does (see
:mod:`flexpl.studies.ray_tasks`). The summaries come back to this process, which writes
comparison.csv from them in the order of ``--strategies``: the same file either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexpl.errors import UserError


@dataclass(frozen=True)
class Job:
    """One run of a comparison: ``strategy`` with ``seed`` into ``folder``; ``label`` names its progress bar."""

    strategy: str
    seed: int | None
    folder: Path
    label: str
    show_data: bool = False


def _run(scenario: str | None, sets: Sequence[str], job: Job, quiet: bool) -> tuple[str, Any]:
    """One job; a diverged run comes back as ``("diverged", message)`` (a Ray task cannot raise it as it is)."""
    from flexpl.errors import Diverged
    from flexpl.studies import run_one as runs

    try:
        return "ok", runs.run_one(scenario, list(sets), job.strategy, job.seed, job.folder, quiet,
                                  label=job.label, show_data=job.show_data)
    except Diverged as exc:
        return "diverged", str(exc)


def run_jobs(scenario: str | None, sets: Sequence[str], jobs: Sequence[Job], quiet: bool,
             ray: str | None = None, ray_cpus: int | None = None) -> list[dict[str, Any]]:
    """Run ``jobs`` and return their summaries, in the order of ``jobs``.

    ``ray``: None runs them here one after another; "" on a new local Ray with ``ray_cpus``
    CPUs (default every core); an address on that cluster, whose nodes must see the folders.
    A diverged run stops the comparison with :class:`~flexpl.errors.Diverged` either way.
    """
    from flexpl.errors import Diverged

    if ray is None:
        out = []
        for job in jobs:
            status, value = _run(scenario, sets, job, quiet)
            if status == "diverged":
                raise Diverged(value)
            out.append(value)
        return out
    from flexpl.config.scenario import load_scenario
    from flexpl.io.console import make_console
    from flexpl.studies import ray_tasks as ray_exec

    # a Ray worker need not share this process's working directory: give it absolute paths
    where = str(Path(scenario).resolve()) if scenario and Path(scenario).is_file() else scenario
    tasks = [ray_exec.Task(i, _run, (where, list(sets), Job(j.strategy, j.seed, j.folder.resolve(), j.label), True),
                           load_scenario(scenario, list(sets), j.strategy, j.seed).engine.workers or 1)
             for i, j in enumerate(jobs)]
    got: dict[int, dict[str, Any]] = {}
    console = make_console(quiet)

    def finished(i: Any, result: tuple[str, Any]) -> None:
        status, value = result
        if status == "diverged":
            raise Diverged(value)
        if not (jobs[i].folder / "summary.json").is_file():  # ran on a node whose file system is not this one's
            raise UserError(f"--ray: {jobs[i].label} finished on a Ray node but {jobs[i].folder} is not here; "
                            "give --out a folder every node shares (e.g. on NFS)")
        got[i] = value
        console.print(f"{jobs[i].label}: done ({len(got)}/{len(jobs)})")

    with ray_exec.session(ray, ray_cpus) as session:
        try:
            ray_exec.run_tasks(session, tasks, finished)
        except ray_exec.TaskError as exc:
            raise UserError(f"compare {jobs[exc.key].label}: {exc}") from None
    return [got[i] for i in range(len(jobs))]


def compare(scenario: str | None, sets: Sequence[str], strategies: Sequence[str], seed: int | None, out: Path,
            quiet: bool, ray: str | None = None, ray_cpus: int | None = None) -> list[dict[str, Any]]:
    """Every strategy once into ``out/<strategy>``; writes ``out/comparison.csv``; returns the summaries."""
    from flexpl.costs.targets import target_columns
    from flexpl.io.results import write_csv

    summaries = run_jobs(scenario, sets, [Job(s, seed, out / s, f"[{i + 1}/{len(strategies)}] {s}", i == 0)
                                          for i, s in enumerate(strategies)], quiet, ray, ray_cpus)
    rows = [{k: v for k, v in s.items() if not isinstance(v, dict)} for s in summaries]
    for row, s in zip(rows, summaries):  # bytes_to_0.7, ... (flexpl.costs.targets)
        row.update(target_columns(s.get("to_target")))
    write_csv(out / "comparison.csv", rows)
    return summaries


def compare_seeds(scenario: str | None, sets: Sequence[str], strategies: Sequence[str], seeds: Sequence[int],
                  data_nodes: Sequence[str], out: Path, quiet: bool, ray: str | None = None,
                  ray_cpus: int | None = None) -> list[dict[str, Any]]:
    """Every strategy once per seed into ``out/<strategy>/seed<k>``, then mean ± std per strategy.

    Writes ``comparison_seeds.csv`` (one row per strategy and seed, with the energy spent on
    ``data_nodes``) and ``comparison.csv`` (one row per strategy, over seeds:
    :func:`flexpl.studies.seeds.aggregate_seeds`); returns the latter's rows. A seed's run
    already finished in its folder (same scenario digest) is reused, so adding a seed to the
    list runs only the new one.
    """
    import json

    from flexpl.config.scenario import load_scenario
    from flexpl.costs.targets import target_columns
    from flexpl.io.results import write_csv
    from flexpl.studies.seeds import SEED_DIR, aggregate_seeds, device_energy
    from flexpl.studies.sweep import is_finished

    per_seed: list[dict[str, Any]] = []
    aggs: list[dict[str, Any]] = []
    n = len(strategies) * len(seeds)
    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for i, s in enumerate(strategies):
        for j, k in enumerate(seeds):
            folder = out / s / SEED_DIR.format(k)
            if is_finished(folder, load_scenario(scenario, sets, s, k).digest()):  # resumable, as sweep
                summaries[(s, k)] = json.loads((folder / "summary.json").read_text())
            else:
                todo.append(Job(s, k, folder, f"[{i * len(seeds) + j + 1}/{n}] {s} seed {k}", i == 0 and j == 0))
    for job, summ in zip(todo, run_jobs(scenario, sets, todo, quiet, ray, ray_cpus)):
        summaries[(job.strategy, job.seed)] = summ  # type: ignore[index]
    for s in strategies:
        rows = []
        for k in seeds:
            summ = summaries[(s, k)]
            row = {"strategy": s, "seed": k, **{c: v for c, v in summ.items()
                                                if not isinstance(v, dict) and c not in ("strategy", "seed")}}
            row["device_energy_j_total"] = device_energy(summ, data_nodes)
            row.update(target_columns(summ.get("to_target")))  # bytes_to_0.7, ... (empty: not reached)
            rows.append(row)
        per_seed.extend(rows)
        aggs.append({"strategy": s, **aggregate_seeds(rows)})
    write_csv(out / "comparison_seeds.csv", per_seed)
    write_csv(out / "comparison.csv", aggs)
    return aggs
