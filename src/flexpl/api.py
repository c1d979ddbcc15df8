"""The public Python API: what the ``flexpl`` command does, from Python.

>>> import flexpl
>>> scn = flexpl.load_scenario("digits-star", overrides={"training.rounds": 2})   # doctest: +SKIP
>>> res = flexpl.simulate(scn)                                                     # doctest: +SKIP
>>> res.table()             # rounds as a table (text, or HTML in a notebook)        # doctest: +SKIP
>>> flexpl.predict(scn)["bytes_total"] == res.summary["bytes_total"]              # doctest: +SKIP
True

A model or dataset given as a Python object (``simulate(scn, model=nn.Sequential(...))``)
lives in this process only; for ``engine.backend: dist`` (fresh worker processes) name it
by import path in the scenario (``model: {factory: "mypkg.models:build"}``) or pass a
function defined in an importable module, which is turned into that import path.
"""

from __future__ import annotations

import copy
import csv
import html
import json
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexpl.config import scenario as config
from flexpl.config.scenario import Scenario
from flexpl.costs.targets import target_columns
from flexpl.errors import Diverged, UserError
from flexpl.io.results import RunWriter, prepare_out_dir, write_csv
from flexpl.io.user_code import import_path_of
from flexpl.plan.layout import PRESETS

__all__ = ["Result", "Table", "compare", "load_scenario", "predict", "simulate"]

# (numpy and torch, the simulator, the planner and the dist launcher are imported by the functions that
# use them, so that flexpl.load_scenario and flexpl.table load quickly)

DEFAULT_COLUMNS = ("round", "accuracy", "loss", "train_loss", "bytes", "flops", "sim_time_s", "energy_j")
DEFAULT_STRATEGIES = ("centralized", "fl", "sl", "sfl", "mp", "fpl")


# ---------------------------------------------------------------- results


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return "-" if v is None else str(v)


@dataclass
class Table:
    """A pandas-free table: ``columns`` and ``rows`` (lists of values), shown as text or, in a notebook, HTML.

    ``pandas.DataFrame(t.rows, columns=t.columns)`` (or ``DataFrame(t.records())``) makes it a data frame.
    """

    columns: list[str]
    rows: list[list[Any]]

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts."""
        return [dict(zip(self.columns, r)) for r in self.rows]

    def column(self, name: str) -> list[Any]:
        """The values of one column."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns: {', '.join(self.columns)}")
        i = self.columns.index(name)
        return [r[i] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records())

    def __repr__(self) -> str:
        cells = [[_cell(v) for v in r] for r in self.rows]
        width = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(self.columns, width))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, width)) for r in cells]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r) + "</tr>" for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise UserError("as_frame/to_pandas: pandas is not installed; pip install pandas "
                        "(or flexpl[track]), or use the pandas-free Table") from None
    return pandas


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *,
          as_frame: bool = False) -> Any:
    """A :class:`Table` of dict ``rows`` (``columns``: which, in order; default every key, first seen first).

    ``as_frame=True`` returns a ``pandas.DataFrame`` with the same columns and rows instead
    (a :class:`~flexpl.errors.UserError` naming the install where pandas is missing).
    """
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    t = Table(cols, [[r.get(c) for c in cols] for r in rows])
    if as_frame:
        return _pandas().DataFrame(t.rows, columns=t.columns)
    return t


@dataclass
class Result:
    """One run: ``rounds`` (a dict per round, as rounds.csv), ``summary`` (as summary.json), ``paths`` (files written)."""

    rounds: list[dict[str, Any]]
    summary: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    scenario: Scenario | None = None

    def table(self, columns: Sequence[str] | None = None) -> Table:
        """The rounds as a :class:`Table` (default: accuracy, losses, bytes, FLOPs, time, energy)."""
        if columns is None:
            columns = [c for c in DEFAULT_COLUMNS if any(c in r for r in self.rounds)]
        return table(self.rounds, columns)

    def to_pandas(self, columns: Sequence[str] | None = None) -> Any:
        """The rounds as a ``pandas.DataFrame``, one row per round, every column of rounds.csv (or ``columns``)."""
        return table(self.rounds, columns, as_frame=True)

    def __repr__(self) -> str:
        s = self.summary
        return (f"Result({s.get('scenario')} / {s.get('strategy')}: {len(self.rounds)} rounds, "
                f"final_accuracy={_cell(s.get('final_accuracy'))}, bytes_total={_cell(s.get('bytes_total'))}, "
                f"flops_total={_cell(s.get('flops_total'))}, sim_time_s={_cell(s.get('sim_time_s'))})")

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(repr(self))}</p>" + self.table()._repr_html_()


# ---------------------------------------------------------------- scenarios


def _override_list(overrides: Sequence[str] | Mapping[str, Any] | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    if isinstance(overrides, str):
        return [overrides]
    return [str(o) for o in overrides]


def load_scenario(source: str | Path | Mapping[str, Any] | Scenario | None = None, *,
                  overrides: Sequence[str] | Mapping[str, Any] | None = None,
                  strategy: str | None = None, seed: int | None = None) -> Scenario:
    """A validated :class:`~flexpl.config.scenario.Scenario` from a built-in name, a YAML path, a dict or a Scenario.

    ``overrides`` are ``--set`` items (``["training.rounds=3"]``) or a mapping of dotted keys
    (``{"training.rounds": 3}``); ``strategy``/``seed`` override those fields. The scenario's
    ``strategy_overrides`` for its strategy apply, as on the command line. Bad input raises
    :class:`flexpl.errors.UserError` with one line naming the field.
    """
    sets = _override_list(overrides)
    if source is None or isinstance(source, str | Path):
        return config.load_scenario(None if source is None else str(source), sets, strategy, seed)
    if isinstance(source, Scenario):
        if not sets and strategy is None and seed is None:
            return source
        data = source.resolved()
    elif isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    else:
        raise UserError(f"scenario: expected a name, a path, a dict or a Scenario, got {type(source).__name__}")
    return config.scenario_from_data(data, sets, strategy, seed)


# ---------------------------------------------------------------- Python objects as models and datasets

_OBJECT_MODEL, _OBJECT_DATA = "python-object-model", "python-object-dataset"


@contextmanager
def _bound(scn: Scenario, model: Any, dataset: Any) -> Iterator[tuple[Scenario, bool]]:
    """``scn`` with ``model``/``dataset`` (Python objects) put in; yields (scenario, whether objects are bound).

    A function defined in an importable module becomes an import path (every process can
    build it); anything else is registered under a temporary name for the duration of the call.
    """
    from torch import nn

    from flexpl import data as D
    from flexpl import models as M

    saved = (M.ZOO.get(_OBJECT_MODEL), M.REGISTERED.get(_OBJECT_MODEL), D.REGISTERED.get(_OBJECT_DATA))
    local = False
    try:
        if model is not None:
            path = None if isinstance(model, nn.Module) else import_path_of(model)
            if isinstance(model, str | dict):
                scn = scn.model_copy(update={"model": model})
            elif path is not None:
                scn = scn.model_copy(update={"model": {"factory": path}})
            elif isinstance(model, nn.Module):
                M.as_block_model(model, "model")  # fails early on a module that is not a Sequential/BlockModel
                M.register_model(_OBJECT_MODEL, lambda: copy.deepcopy(model))
                scn, local = scn.model_copy(update={"model": _OBJECT_MODEL}), True
            elif callable(model):
                M.register_model(_OBJECT_MODEL, model)
                scn, local = scn.model_copy(update={"model": _OBJECT_MODEL}), True
            else:
                raise UserError(f"model: expected an nn.Sequential, a function returning one, a name or a "
                                f"mapping, got {type(model).__name__}")
        if dataset is not None:
            if isinstance(dataset, str | dict):
                spec: Any = dataset
            elif not isinstance(dataset, D.Dataset | tuple | list) and callable(dataset) \
                    and import_path_of(dataset) is not None:
                spec = {"factory": import_path_of(dataset)}
            else:
                fn = dataset if callable(dataset) and not isinstance(dataset, D.Dataset) else (lambda: dataset)
                D.REGISTERED[_OBJECT_DATA] = fn
                spec, local = _OBJECT_DATA, True
            scn = scn.model_copy(update={"data": scn.data.model_copy(update={"dataset": spec})})
        if scn.engine.backend == "dist":  # registered names exist here only: fresh processes need import paths
            name = scn.model if isinstance(scn.model, str) else None
            if name in M.REGISTERED and import_path_of(M.REGISTERED[name][0]):
                scn = scn.model_copy(update={"model": {"factory": import_path_of(M.REGISTERED[name][0])}})
            ds = scn.data.dataset
            if isinstance(ds, str) and ds in D.REGISTERED and import_path_of(D.REGISTERED[ds]):
                scn = scn.model_copy(update={"data": scn.data.model_copy(
                    update={"dataset": {"factory": import_path_of(D.REGISTERED[ds])}})})
            local = local or (isinstance(scn.model, str) and scn.model in M.REGISTERED) or \
                (isinstance(scn.data.dataset, str) and scn.data.dataset in D.REGISTERED)
        yield scn, local
    finally:
        for reg, key, old in ((M.ZOO, _OBJECT_MODEL, saved[0]), (M.REGISTERED, _OBJECT_MODEL, saved[1]),
                              (D.REGISTERED, _OBJECT_DATA, saved[2])):
            if old is None:
                reg.pop(key, None)
            else:
                reg[key] = old


# ---------------------------------------------------------------- running


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    """rounds.csv back as dicts of numbers."""
    def num(v: str) -> Any:
        if v == "":
            return None
        try:
            f = float(v)
        except ValueError:
            return v
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() and v not in ("nan", "inf") else f
    with path.open() as fh:
        return [{k: num(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _paths(out: Path) -> dict[str, Path]:
    names = {"out": "", "summary": "summary.json", "rounds": "rounds.csv", "config": "config.yaml",
             "timeline": "timeline.csv", "checkpoint": "checkpoint.pt", "checkpoints": "checkpoint",
             "rounds_nodes": "rounds_nodes.csv", "rounds_links": "rounds_links.csv"}
    return {k: out / v if v else out for k, v in names.items() if (out / v).exists()}


def simulate(scenario: str | Path | Mapping[str, Any] | Scenario, *, model: Any = None, dataset: Any = None,
             out: str | Path | None = None, on_round: Callable[[dict[str, Any]], None] | None = None,
             resume: bool = False) -> Result:
    """Train ``scenario`` and return its rounds and summary, as ``flexpl run`` does.

    ``model``: an ``nn.Sequential`` (cut between its children), a function
    ``(input_shape, num_classes) -> nn.Sequential``, or a model name/mapping; ``dataset``: a
    :class:`flexpl.Dataset`, ``(train_x, train_y, test_x, test_y)``, a loader function or a
    dataset name. With ``out``, the run writes config.yaml, rounds.csv, summary.json,
    timeline.csv and a checkpoint there (``resume=True`` continues a stopped run; the dist
    backend's checkpoints are a folder, ``checkpoint/``, with a file per rank).
    ``on_round(row)`` is called after every round. ``engine.backend: dist`` runs one process
    per node (call it under ``if __name__ == "__main__":``; ``out`` defaults to a temporary folder).
    """
    scn = load_scenario(scenario)
    with _bound(scn, model, dataset) as (scn, local):
        if scn.engine.backend == "dist":
            if local:
                raise UserError("model/dataset: a Python object or a name registered in __main__ cannot reach the "
                                "dist backend's worker processes; define it in an importable module, or name it by "
                                "import path (model: {factory: 'module:function'})")
            return _simulate_dist(scn, out, on_round, resume)
        return _simulate_sim(scn, out, on_round, resume)


def _simulate_sim(scn: Scenario, out: str | Path | None, on_round: Callable[[dict[str, Any]], None] | None,
                  resume: bool) -> Result:
    from flexpl.planner.memory import check_fits
    from flexpl.sim.simulator import run, setup

    st = setup(scn)
    if not resume:
        check_fits(scn, st.data)
    if out is None:
        if resume:
            raise UserError("resume: give out, the folder of the stopped run")
        result = run(scn, on_round=on_round, st=st)
        return Result(result.rounds, result.summary, {}, scn)
    from flexpl.costs.trace import timeline_rows
    from flexpl.sim import checkpoint

    folder = prepare_out_dir(out)
    if resume:
        checkpoint.load(folder / checkpoint.FILENAME, scn.digest())
    writer = RunWriter(folder, scn.digest(), scn.resolved()).begin(resume=resume)

    def each(row: dict[str, Any]) -> None:
        writer.round(row)  # rounds completed so far survive a crash
        if on_round:
            on_round(row)

    try:
        result = run(scn, on_round=each, st=st, keep_traces=True, checkpoint_dir=folder, resume=resume,
                     on_round_bill=writer.round_bill)
    except Diverged as exc:
        if exc.summary is not None:
            writer.finish(exc.summary, exc.rows)
        raise
    if result.traces:
        writer.timeline(timeline_rows(*result.traces[-1], round_index=len(result.rounds)))
    writer.finish(result.summary, result.rounds)
    return Result(result.rounds, result.summary, _paths(folder), scn)


def _simulate_dist(scn: Scenario, out: str | Path | None, on_round: Callable[[dict[str, Any]], None] | None,
                   resume: bool) -> Result:
    from flexpl.dist.launch import launch
    from flexpl.planner.memory import check_fits

    if resume and out is None:
        raise UserError("resume: give out, the folder of the stopped run")
    if scn.evaluation.stop_at_target:
        raise UserError("evaluation.stop_at_target: the dist backend cannot stop at a target; use engine.backend sim")
    check_fits(scn)
    tmp = tempfile.TemporaryDirectory(prefix="flexpl-dist-") if out is None else None
    folder = Path(tmp.name if tmp else out)  # type: ignore[arg-type]
    seen = [0]

    def progress(done: int, _info: str) -> None:
        if on_round and (folder / "rounds.csv").exists():
            rows = _read_rounds(folder / "rounds.csv")
            for row in rows[seen[0]:done]:
                on_round(row)
            seen[0] = max(seen[0], min(done, len(rows)))

    try:
        summary = launch(scn, folder, on_progress=progress, resume=resume)
        rounds = _read_rounds(folder / "rounds.csv")
        if on_round:
            for row in rounds[seen[0]:]:
                on_round(row)
        return Result(rounds, summary, {} if tmp else _paths(folder), scn)
    finally:
        if tmp is not None:
            tmp.cleanup()


def predict(scenario: str | Path | Mapping[str, Any] | Scenario, plan: str | Mapping[str, Any] | None = None, *,
            model: Any = None, dataset: Any = None) -> dict[str, Any]:
    """The planner's prediction (no training) of the scenario's plan, or of ``plan``.

    ``plan``: None (the scenario's strategy and plan), a preset name (``"sfl"``), or a
    ``plan:`` mapping (``{"cut": 2}``, or a full plan with ``stages``; a ``strategy`` key picks
    the preset it overrides). Returns the ``flexpl plan`` row (``bytes_total``, ``flops_total``,
    ``sim_time_s``, ``energy_j_total``, per-round columns, memory) plus ``per_node`` and ``per_link``.
    Bytes, FLOPs and virtual time equal what :func:`simulate` counts (evaluation is not predicted).
    """
    from flexpl.planner import Candidate, Planner

    scn = load_scenario(scenario)
    with _bound(scn, model, dataset) as (scn, _):
        if plan is None:
            own = scn.plan.model_dump(exclude_none=True) if scn.plan else None
            cand = Candidate("scenario", scn.strategy, own, "scenario")
        elif isinstance(plan, str):
            cand = Candidate(plan, plan, None, "preset")
        elif isinstance(plan, Mapping):
            body = {k: v for k, v in plan.items() if k != "strategy"}
            cand = Candidate("custom", str(plan.get("strategy", scn.strategy)), body or None, "custom")
        else:
            raise UserError(f"plan: expected a preset name or a plan mapping, got {type(plan).__name__}")
        pred = Planner(scn).predict(cand)
    return {**pred.row, "per_node": pred.per_node, "per_link": pred.per_link}


def compare(scenario: str | Path | Mapping[str, Any] | Scenario, strategies: Sequence[str] = DEFAULT_STRATEGIES, *,
            seeds: Sequence[int] | None = None, out: str | Path | None = None, model: Any = None,
            dataset: Any = None) -> list[dict[str, Any]]:
    """Run every strategy (once per seed) on the same scenario; one flat summary row per run.

    Each strategy gets its own ``strategy_overrides``, as ``flexpl compare`` does (a Scenario
    object already carries its own strategy's). With ``out``, runs go to ``out/<strategy>``
    (``out/<strategy>/seed<k>`` with ``seeds``) and the rows to ``out/comparison.csv``.
    ``flexpl.api.table(rows)`` shows them as a table.
    """
    for s in strategies:
        if s not in PRESETS:
            raise UserError(f"strategies: unknown strategy '{s}'; allowed: {', '.join(PRESETS)}")
    source: Any = scenario.resolved() if isinstance(scenario, Scenario) else scenario
    rows: list[dict[str, Any]] = []
    base = Path(out) if out is not None else None
    for s in strategies:
        for k in (list(seeds) if seeds is not None else [None]):
            scn = load_scenario(source, strategy=s, seed=k)
            folder = None if base is None else (base / s if k is None else base / s / f"seed{k}")
            res = simulate(scn, model=model, dataset=dataset, out=folder)
            row = {c: v for c, v in res.summary.items() if not isinstance(v, dict)}
            row.update(target_columns(res.summary.get("to_target")))
            rows.append(row)
    if base is not None:
        write_csv(prepare_out_dir(base) / "comparison.csv", rows)
    return rows
