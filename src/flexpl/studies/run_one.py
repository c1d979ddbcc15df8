"""One run of a scenario on the simulator into a results folder, with a progress bar.

What ``flexpl run``, ``compare``, ``sweep`` and ``tune`` run for every strategy, seed or
cell: load the scenario, check it fits, set it up, train it round by round, and write the
folder through :class:`flexpl.io.results.RunWriter`. Not a command itself: the CLI calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flexpl.io.console import make_console, progress, table


def data_table(st: Any) -> Any:
    """The rich table of a set-up run's data: samples, label entropy and label histogram per data node."""
    shown = 16  # a thousand devices would fill the screen: the first ones, then a count
    rows = [(name, str(s["samples"]), f"{s['entropy_bits']:.2f}", " ".join(str(h) for h in s["histogram"]))
            for name, s in zip(st.topo.data_nodes[:shown], st.parts_summary[:shown])]  # only the rows shown
    if len(st.parts_summary) > shown:
        rows.append((f"... {len(st.parts_summary) - shown} more", "", "", ""))
    return table(f"data: {st.data.name}, partition {st.scn.data.partition.kind}",
                 ("node", "samples", "label entropy (bits)", "labels"), rows, left=4)


def run_one(scenario: str | None, sets: Sequence[str], strategy: str | None, seed: int | None,
            out: Path, quiet: bool, label: str = "", show_data: bool = True,
            resume: bool = False) -> dict[str, Any]:
    """Run one scenario on the simulator into ``out`` with a progress bar; returns the summary.

    The run state is checkpointed in ``out`` after every round; ``resume`` continues from it.
    """
    from flexpl.config.scenario import load_scenario
    from flexpl.costs.trace import timeline_rows
    from flexpl.errors import Diverged
    from flexpl.io.results import RunWriter, prepare_out_dir
    from flexpl.sim.simulator import run, setup

    scn = load_scenario(scenario, list(sets), strategy, seed)
    out = prepare_out_dir(out)
    console = make_console(quiet)
    st = setup(scn)
    if not resume:  # a placement that does not fit a node's memory stops before training
        from flexpl.planner.memory import check_fits

        check_fits(scn, st.data)
    if resume:  # a missing, corrupted or foreign checkpoint is an input error: the folder stays as it is
        from flexpl.sim import checkpoint

        checkpoint.load(out / checkpoint.FILENAME, scn.digest())
    writer = RunWriter(out, scn.digest(), scn.resolved())
    if show_data:
        console.print(data_table(st))
        ex = st.executor
        console.print(f"executor: {ex.mode}" + (f" ({ex.workers} workers)" if ex.mode == "processes" else "")
                      + f" -- {ex.reason}")
    writer.begin(resume=resume)  # before anything is written (see [Note: stale results])
    with progress(quiet, console) as bar:
        task = bar.add_task(label or f"{scn.name} / {st.plan.name}", total=scn.training.rounds, info="")

        def on_round(row: dict[str, Any]) -> None:
            writer.round(row)  # rounds completed so far survive a crash
            bar.update(task, advance=1, info=f"acc {row['accuracy']:.4f}  bytes {row['bytes']:.3e}  "
                                             f"t {row['sim_time_s']:.1f}s")

        try:
            result = run(scn, on_round=on_round, st=st, keep_traces=True, checkpoint_dir=out, resume=resume,
                         on_round_bill=writer.round_bill)  # rounds_nodes.csv, rounds_links.csv
        except Diverged as exc:  # keep what was completed: rounds.csv is written; the summary of those rounds too
            if exc.summary is not None:
                writer.finish(exc.summary, exc.rows)
            raise
    if result.traces:  # the last round on the virtual clock: what the report's timeline draws
        writer.timeline(timeline_rows(*result.traces[-1], round_index=len(result.rounds)))
    writer.finish(result.summary, result.rounds)  # summary.json last: marks a finished run
    return result.summary
