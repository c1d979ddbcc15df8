"""Accuracy pilots for ``flexpl plan --target-accuracy``: one representative per learning class, successive halving.

Every learning class (:mod:`flexpl.planner.classes`) trains one representative (its member with the
fewest FLOPs per round: the class's members learn alike, so the cheapest to simulate stands for all).
Rung 1 trains every class for ``first`` rounds (2); each later rung doubles the rounds and keeps the
better half of the classes (by ``score``: the predicted cost to the target, or the last accuracy), until a rung would pass the scenario's rounds or
the budget (rounds trained, all pilots together). A pilot runs the scenario's own number of rounds
and is stopped after the rung's rounds, so its round ``r`` is the full run's round ``r`` (a FedAvg
period longer than the pilot is not cut short).

A later rung continues each surviving class from where its previous rung stopped: every pilot saves
its run state (:mod:`flexpl.sim.checkpoint`) in a temporary folder at every multiple of ``FIRST_RUNG``
rounds, so at every rung's last round, and the next rung resumes it (``run(..., resume=True)``), which
ends bit-identical to an uninterrupted run. The accuracies of rounds 1..r are therefore those of a
pilot trained from scratch for r rounds, and only the new rounds are trained: a rung of r rounds after
one of r/2 costs r/2 rounds per class (``rounds_trained`` and the budget count these). Only
``training.checkpoint_every`` is changed (when to save; never what is learned). Seeds: the scenario's.

With ``ray`` (``flexpl plan --target-accuracy A --ray [ADDRESS]``) each rung's pilots run side by side
as Ray tasks (:mod:`flexpl.studies.ray_tasks`, the planner's dataset shipped once), each continuing
its checkpoint in ``folder`` (which a cluster's nodes must see: ``flexpl plan`` passes a folder in
``--out``); the accuracies are those of the pilots run here, bit for bit (the same code, seeds and
checkpoints), and the rungs and their order are unchanged.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from flexpl.errors import UserError
from flexpl.planner.candidates import Candidate, candidate_data

if TYPE_CHECKING:
    from flexpl.config.scenario import Scenario
    from flexpl.planner.predict import Planner

FIRST_RUNG = 2


@dataclass
class Pilots:
    """What the pilots measured: accuracies per class (round 1 onwards), their representative, the cost."""

    accuracy: dict[str, list[float]] = field(default_factory=dict)
    representative: dict[str, str] = field(default_factory=dict)
    rounds_trained: int = 0
    wall_s: float = 0.0
    seed: int = 0
    rungs: list[tuple[int, int]] = field(default_factory=list)  # (rounds, classes trained)

    COLUMNS: ClassVar[tuple[str, ...]] = ("learning_class", "plan", "seed", "round", "accuracy")  # pilots.csv

    def rows(self) -> list[dict[str, Any]]:
        """One row per class and pilot round, for ``pilots.csv``: ``learning_class``, ``plan`` (the class's
        representative), ``seed``, ``round``, ``accuracy``; the classes in the order they were piloted."""
        return [{"learning_class": c, "plan": self.representative.get(c, ""), "seed": self.seed, "round": r,
                 "accuracy": a}
                for c, acc in self.accuracy.items() for r, a in enumerate(acc, start=1)]


class _Stop(Exception):
    pass


def default_budget(n_classes: int, rounds: int) -> int:
    """Rounds that successive halving spends with no budget given: every rung up to the scenario's rounds.

    A rung trains only its new rounds (it continues the previous rung's pilots): ``r - r/2`` per class,
    ``FIRST_RUNG`` per class on rung 1.
    """
    total, done, r, n = 0, 0, FIRST_RUNG, n_classes
    while n >= 1 and r <= rounds:
        total += (r - done) * n
        if n == 1:
            break
        done, r, n = r, r * 2, (n + 1) // 2
    return total


def check_budget(budget: int | None, n_classes: int, rounds: int) -> int:
    """The budget in rounds (the default when None), or a one-line UserError if it cannot train rung 1."""
    if rounds < FIRST_RUNG:
        raise UserError(f"--target-accuracy: the scenario trains {rounds} round(s); pilots need at least "
                        f"{FIRST_RUNG} (set training.rounds)")
    if budget is None:
        return default_budget(n_classes, rounds)
    need = FIRST_RUNG * n_classes
    if budget < need:
        raise UserError(f"--pilot-budget: {budget} rounds cannot give each of the {n_classes} learning classes "
                        f"{FIRST_RUNG} rounds; give at least {need}")
    return budget


def _train(scn: Scenario, cand: Candidate, rounds: int, dataset: Any, folder: Path, resume: bool
           ) -> list[float]:
    """Accuracies of rounds 1..``rounds`` of ``cand``'s pilot, continuing the one saved in ``folder`` if ``resume``.

    The run state is saved in ``folder`` every ``FIRST_RUNG`` rounds (every rung ends on such a round):
    a resumed pilot trains only the rounds after its checkpoint, and its restored rounds come first.
    """
    from flexpl.config.scenario import apply_strategy_overrides, validate_scenario
    from flexpl.sim.simulator import run, setup

    data = candidate_data(scn, cand)
    if data.get("strategy") != scn.strategy:
        apply_strategy_overrides(data)
    data.setdefault("training", {})["checkpoint_every"] = FIRST_RUNG  # when to save, not what is learned
    sc = validate_scenario(data)
    acc: list[float] = []

    def on_round(row: dict[str, Any]) -> None:
        acc.append(float(row["accuracy"]))
        if len(acc) >= rounds:
            raise _Stop

    folder.mkdir(parents=True, exist_ok=True)
    try:
        run(sc, on_round=on_round, st=setup(sc, dataset=dataset), checkpoint_dir=folder, resume=resume)
    except _Stop:  # raised after the round's checkpoint was saved (run waits for the write on its way out)
        pass
    return acc


def run_pilots(scn: Scenario, planner: Planner, cands: dict[str, Candidate], rows: list[dict[str, Any]],
               budget: int, console: Any = None, score: Callable[[str, list[float]], float] | None = None,
               ray: str | None = None, ray_cpus: int | None = None, folder: Path | None = None) -> Pilots:
    """Train one representative per learning class by successive halving within ``budget`` rounds.

    ``score(class, accuracies)``: lower is more promising (default: minus the last accuracy). ``ray``:
    an address, or "" for a local Ray with ``ray_cpus`` CPUs: each rung's pilots as Ray tasks, their
    checkpoints in ``folder`` (default: a temporary folder, which only a local Ray sees).
    """
    rank = score or (lambda _cls, acc: -acc[-1])
    t0 = time.perf_counter()
    out = Pilots(seed=scn.seed)
    for r in sorted(rows, key=lambda r: r["flops_per_round"]):
        out.representative.setdefault(r["learning_class"], r["plan"])
    alive = list(out.representative)
    max_rounds = scn.training.rounds
    rung, done = FIRST_RUNG, 0  # done: the rounds every alive class has trained (its checkpoint's round)
    with contextlib.ExitStack() as stack:
        tmp = folder or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flexpl-pilots-")))
        train_rung = (_ray_trainer(stack, scn, cands, out, planner.data, tmp, ray, ray_cpus, console)
                      if ray is not None else None)
        while alive and rung <= max_rounds and out.rounds_trained + (rung - done) * len(alive) <= budget:
            if train_rung is not None:
                train_rung(alive, rung, done)
            else:
                for i, cls in enumerate(alive):
                    plan = out.representative[cls]
                    if console is not None:
                        console.print(f"pilot [{i + 1}/{len(alive)}] {cls} ({plan}): rounds {done + 1}-{rung}")
                    where = tmp / f"pilot-{list(out.representative).index(cls)}"
                    out.accuracy[cls] = _train(scn, cands[plan], rung, planner.data, where, done > 0)
            out.rounds_trained += (rung - done) * len(alive)
            out.rungs.append((rung, len(alive)))
            if len(alive) == 1:
                break
            alive = sorted(alive, key=lambda c: (rank(c, out.accuracy[c]),
                                                 -out.accuracy[c][-1]))[:(len(alive) + 1) // 2]
            done, rung = rung, rung * 2
    out.wall_s = time.perf_counter() - t0
    return out


def _ray_trainer(stack: contextlib.ExitStack, scn: Scenario, cands: dict[str, Candidate], out: Pilots,
                 dataset: Any, tmp: Path, ray: str, ray_cpus: int | None, console: Any) -> Callable[..., None]:
    """A function that trains one rung's classes (``alive``, to round ``rung`` from round ``done``) as Ray
    tasks in the Ray session ``stack`` holds, filling ``out.accuracy``."""
    from flexpl.studies import ray_tasks as ray_exec

    ray_exec.require(ray, ray_cpus)
    rt = stack.enter_context(ray_exec.session(ray, ray_cpus))
    ref = rt.put(dataset)
    index = {cls: i for i, cls in enumerate(out.representative)}

    def rung_of(alive: list[str], rung: int, done: int) -> None:
        if console is not None:
            console.print(f"pilots: {len(alive)} classes, rounds {done + 1}-{rung}, as Ray tasks")

        def finished(cls: Any, acc: list[float]) -> None:
            out.accuracy[cls] = acc
            if console is not None:
                console.print(f"pilot {cls} ({out.representative[cls]}): accuracy {acc[-1]:.4f} in round {rung}")

        tasks = [ray_exec.Task(cls, _train, (scn, cands[out.representative[cls]], rung, ref,
                                             tmp / f"pilot-{index[cls]}", done > 0),
                               scn.engine.workers or 1) for cls in alive]
        try:
            ray_exec.run_tasks(rt, tasks, finished)
        except ray_exec.TaskError as exc:
            raise UserError(f"--target-accuracy pilot {exc.key}: {exc}") from None
    return rung_of
