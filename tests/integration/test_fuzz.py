"""Generated input (Hypothesis): mutated scenarios, ``--set`` strings and ``--grid`` strings.

Property: FlexPL accepts the input or refuses it with one :class:`UserError` line (exit 2,
nothing written into ``--out``); never another exception, never a hang (each case runs under
an alarm). The CI budget is ``FLEXPL_FUZZ_EXAMPLES`` examples per property (default 300; the command line, which loads data, a fifteenth;
derandomized); ``benchmarks/fuzz.py`` runs the long profile. Every failure found is kept as a
case of tests/integration/bad_inputs/.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
from importlib import resources
from typing import Any

import yaml
from hypothesis import (  # the dev extra (make setup) installs it: no skip
    HealthCheck,
    given,
    settings,
)
from hypothesis import strategies as st

from flexpl.cli import main
from flexpl.config.scenario import scenario_from_data
from flexpl.errors import UserError
from flexpl.studies.grid import make_cells, parse_grid

EXAMPLES = int(os.environ.get("FLEXPL_FUZZ_EXAMPLES", "300"))
CASE_TIMEOUT_S = int(os.environ.get("FLEXPL_FUZZ_CASE_TIMEOUT", "20"))
SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))
BASE = yaml.safe_load(resources.files("flexpl.scenarios").joinpath("digits-star.yaml").read_text())
KEYS = ["name", "seed", "strategy", "data.dataset", "data.partition.kind", "data.partition.alpha", "model.name",
        "model.hidden", "model.hidden[0]", "training.rounds", "training.local_epochs", "training.batch_size",
        "training.clients_per_round", "training.optimizer.name", "training.optimizer.lr",
        "training.optimizer.momentum", "training.max_steps_per_round", "nodes[0].name", "nodes[1].profile",
        "nodes[1].holds_data", "links[0].between", "links[0].profile", "plan.cut", "failures.transfer_loss",
        "engine.backend", "evaluation.targets", "data.samples_per_node"]
WEIRD: list[Any] = [None, 0, -1, 1, 2, 10**30, -(10**30), 1e308, -1e-308, math.nan, math.inf, -math.inf, "",
                    "ünïcødé ☃", "dev0", "server", "x" * 300, [], {}, [1, 2], {"a": 1}, True, False, 0.5, "1e9",
                    "mlp", "a:b", "..x:y", "\x00", "-", "[", "10:30"]


@contextlib.contextmanager
def alarm(seconds: int):
    """Fail a case that runs longer than ``seconds`` (a hang), instead of blocking the suite."""
    def boom(*_: Any) -> None:
        raise TimeoutError(f"case ran over {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_scenarios(draw: Any) -> dict[str, Any]:
    """digits-star with 1-4 mutations: a value replaced, a field dropped or added, a list item duplicated or dropped."""
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = data
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        op = draw(st.sampled_from(["replace", "replace", "drop", "unknown", "dup", "text", "number", "code"]))
        if op == "code":  # user code named by a generated import path
            field = draw(st.sampled_from(["model", "loss", "aggregator"]))
            path = draw(st.one_of(st.sampled_from(["..x:y", "a/b:c", "os:getcwd", "math:pi", "x:", ":y", "a.:b",
                                                   "flexpl.models:build_model"]), st.text(max_size=12)))
            if field == "model":
                data["model"] = {"factory": path}
            elif isinstance(data.get("training"), dict):
                data["training"]["loss" if field == "loss" else "aggregator"] = (
                    path if field == "loss" else {"kind": path})
        elif op == "replace":
            parent[key] = copy.deepcopy(draw(st.sampled_from(WEIRD)))
        elif op == "number":
            parent[key] = draw(st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True)))
        elif op == "text":
            parent[key] = draw(st.text(max_size=20))
        elif op == "drop":
            del parent[key]
        elif op == "unknown" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = 1
        elif op == "dup" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
    return data


def _check_user_error(exc: UserError) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg


@SETTINGS
@given(mutated_scenarios())
def test_mutated_scenarios_validate_or_fail_in_one_line(data):
    with alarm(CASE_TIMEOUT_S):
        try:
            scenario_from_data(copy.deepcopy(data))
        except UserError as exc:
            _check_user_error(exc)


set_values = st.one_of(st.sampled_from(["1", "-1", "0", "nan", "inf", "-inf", ".nan", "1e400", "null", "[]", "{}",
                                        "[1,", "ü", "true", "'x'", "a:b", "[0, 0]", "{a: 1}", "99999999999999999999"]),
                       st.text(max_size=12))


@SETTINGS
@given(st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=15)), set_values), min_size=1,
                max_size=3))
def test_set_strings_apply_or_fail_in_one_line(items):
    sets = [f"{k}={v}" for k, v in items]
    with alarm(CASE_TIMEOUT_S):
        try:
            scenario_from_data(copy.deepcopy(BASE), sets)
        except UserError as exc:
            _check_user_error(exc)


@SETTINGS
@given(st.lists(st.one_of(st.builds(lambda k, vs: f"{k}={','.join(vs)}", st.one_of(st.sampled_from(
    [*KEYS, "strategy"]), st.text(max_size=10)), st.lists(set_values, max_size=4)), st.text(max_size=20)),
    min_size=1, max_size=3))
def test_grid_strings_parse_or_fail_in_one_line(grid):
    with alarm(CASE_TIMEOUT_S):
        try:
            cells = make_cells(parse_grid(grid))
            for c in cells[:2]:
                scenario_from_data(copy.deepcopy(BASE), list(c.sets), c.strategy)
        except UserError as exc:
            _check_user_error(exc)


class _WouldTrain(Exception):
    pass


@settings(SETTINGS, max_examples=max(10, EXAMPLES // 15))
@given(data=mutated_scenarios())
def test_the_command_line_exits_0_or_2_in_one_line_and_writes_nothing_on_2(data, tmp_path_factory):
    import flexpl.sim.simulator as simulator

    tmp = tmp_path_factory.mktemp("fuzz")
    scenario = tmp / "s.yaml"
    scenario.write_text(yaml.safe_dump(data, allow_unicode=True))
    out = tmp / "out"
    real = simulator.run

    def stop(*a: Any, **k: Any) -> None:  # everything up to training ran: validation is what is fuzzed here
        raise _WouldTrain

    simulator.run = stop
    err = ""
    try:
        with alarm(CASE_TIMEOUT_S), contextlib.redirect_stderr(__import__("io").StringIO()) as buf:
            try:
                rc = main(["run", str(scenario), "--out", str(out), "--quiet"])
            except _WouldTrain:
                rc = 0
            err = buf.getvalue()
    finally:
        simulator.run = real
    assert rc in (0, 2), err
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert not out.exists() or not any(out.iterdir()), sorted(os.listdir(out))
