"""The round program (flexpl.plan.program): the schedule kinds and sync rules, built once, expand to the
order the engine has always trained in; runs of equal steps are single Repeat blocks."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from flexpl.plan import program as R


def _plan(schedule: str, every: list[tuple[str, int]]) -> SimpleNamespace:
    """A stand-in Plan: one stage per (unit, every) FedAvg period ("" = no sync)."""
    stages = tuple(SimpleNamespace(sync=SimpleNamespace(kind="fedavg" if unit else "none", unit=unit or "round",
                                                        every=k)) for unit, k in every)
    return SimpleNamespace(schedule=schedule, stages=stages)


class _Log:
    """A runner that writes down what it is asked to do."""

    def __init__(self) -> None:
        self.ops: list[tuple] = []

    def collect(self, dst):
        self.ops.append(("collect", dst))

    def download(self, s, names):
        self.ops.append(("download", s, tuple(names)))

    def relay(self, node):
        self.ops.append(("relay", node))

    def step(self, batch):
        self.ops.append(("step", tuple(batch)))

    def step_sync(self, s, names):
        self.ops.append(("sync", s, tuple(names)))

    def upload(self, s, names):
        self.ops.append(("upload", s, tuple(names)))


def _reference(schedule: str, selected: list[str], sizes: dict[str, list[int]], syncs: list[tuple[int, int]],
               node_major: bool) -> list[tuple]:
    """The step loops of simulator.train_round before the program existed, written out plainly."""
    out: list[tuple] = []
    joint = 0

    def step(names: list[str], t: int) -> None:
        nonlocal joint
        out.append(("step", tuple((n, t) for n in names)))
        joint += 1
        for s, k in syncs:
            if joint % k == 0:
                out.append(("sync", s, tuple(names)))

    if schedule == "sequential":
        for n in selected:
            out.append(("relay", n))
            for t in range(len(sizes[n])):
                step([n], t)
    elif schedule == "round_robin":
        cursor = dict.fromkeys(selected, 0)
        while any(cursor[n] < len(sizes[n]) for n in selected):
            for n in selected:
                if cursor[n] < len(sizes[n]):
                    step([n], cursor[n])
                    cursor[n] += 1
    elif node_major and not syncs:
        for n in selected:
            for t in range(len(sizes[n])):
                step([n], t)
    else:
        for t in range(max(len(b) for b in sizes.values())):
            step([n for n in selected if t < len(sizes[n])], t)
    return out


def _sizes(rng: random.Random, nodes: list[str]) -> dict[str, list[int]]:
    """Each node: a few full batches, maybe a short last one, for one or two epochs."""
    out = {}
    for n in nodes:
        full, last, epochs = rng.randint(0, 6), rng.choice([0, 0, 3]), rng.randint(1, 2)
        out[n] = ([8] * full + ([last] if last else [])) * epochs
    if not any(out.values()):
        out[nodes[0]] = [8]
    return out


@pytest.mark.parametrize("schedule", ["lockstep", "sequential", "round_robin"])
@pytest.mark.parametrize("node_major", [False, True])
@pytest.mark.parametrize("every", [[], [("step", 2)], [("step", 3), ("round", 1), ("step", 2)]])
def test_the_program_expands_to_the_engines_step_order(schedule, node_major, every):
    rng = random.Random(7)
    plan = _plan(schedule, every)
    syncs = [(s, k) for s, (unit, k) in enumerate(every) if unit == "step"]
    for _ in range(20):
        nodes = [f"d{i}" for i in range(rng.randint(1, 4))]
        sizes = _sizes(rng, nodes)
        log = _Log()
        R.walk(R.step_blocks(plan, nodes, sizes, node_major and not syncs), log)
        assert log.ops == _reference(schedule, nodes, sizes, syncs, node_major)


def test_runs_of_equal_steps_are_one_repeat_and_the_round_is_start_steps_end():
    plan = _plan("lockstep", [("round", 2)])
    sizes = {"a": [32] * 50 + [5], "b": [32] * 50 + [5], "c": [32] * 20}
    prog = R.round_program(plan, ["a", "b", "c"], sizes, download=True, upload=True, collect_to="server")
    assert prog.start == (R.Repeat(1, (R.Collect("server"),)), R.Repeat(1, (R.Download(0, ("a", "b", "c")),)))
    assert prog.steps == (R.Repeat(20, (R.Step((("a", 0), ("b", 0), ("c", 0))),)),
                          R.Repeat(30, (R.Step((("a", 20), ("b", 20))),)),
                          R.Repeat(1, (R.Step((("a", 50), ("b", 50))),)))
    assert prog.end == (R.Repeat(1, (R.Upload(0, ("a", "b", "c")),)),)
    log = _Log()
    R.walk(prog.blocks, log)
    assert len(log.ops) == 2 + 51 + 1 and log.ops[-2] == ("step", (("a", 50), ("b", 50)))
    # a round that neither downloads nor uploads has only its steps
    bare = R.round_program(plan, ["a"], {"a": [4, 4]}, download=False, upload=False)
    assert bare.start == bare.end == () and bare.steps == (R.Repeat(2, (R.Step((("a", 0),)),)),)


def test_sync_rules():
    plan = _plan("sequential", [("round", 2), ("step", 4), ("round", 5)])
    plan.stages[1].sync.kind = "fedavg"
    assert R.round_fedavg(plan) == [0, 2] and R.step_fedavg(plan) == [1]
    # round-level FedAvg every max(period) rounds, and after the last round
    assert [r for r in range(1, 13) if R.uploads_after(plan, r, 12)] == [5, 10, 12]
    assert R.uploads_after(_plan("lockstep", []), 1, 3)  # nothing to average: every round "syncs"
    assert not R.relays(plan)
    plan.stages[0].sync.kind = "relay"
    assert R.relays(plan) and R.relay_holder_after(plan, ["a", "b"]) == "b"
    assert R.relay_holder_after(_plan("lockstep", []), ["a", "b"]) is None


def test_the_engine_and_the_planner_walk_one_step_code(monkeypatch):
    """``Engine.train_step`` and the planner's ``ShapeWalk`` are both runners of ``flexpl.plan.step``: every
    stage of every step goes through its one walker, so a change to the step changes both."""
    from flexpl import planner as P
    from flexpl.plan import step as S
    from flexpl.sim.simulator import run, setup
    from tests.conftest import digits_star

    seen: list[tuple[str, int]] = []
    forward = S._forward

    def spy(kit, fwd, s, *args):  # kit[0]: the runner
        seen.append((type(kit[0]).__name__, s))
        return forward(kit, fwd, s, *args)

    monkeypatch.setattr(S, "_forward", spy)
    scn = digits_star(["training.rounds=1", "engine.executor=sequential"], strategy="sfl")
    st = setup(scn)
    run(scn, st=st, evaluate=lambda st: {})
    engine_stages = {s for who, s in seen if who == "Engine"}
    seen.clear()
    planner = P.Planner(scn, dataset=st.data)
    planner.predict(P.Candidate("own", scn.strategy, None, "own"))
    planner_stages = {s for who, s in seen if who == "ShapeWalk"}
    assert engine_stages == planner_stages == set(range(len(st.plan.stages)))
    assert len(st.plan.stages) == 2
