"""The runs of ``flexpl compare``: one after another here, or each as a Ray task (``--ray [ADDRESS]``).

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
