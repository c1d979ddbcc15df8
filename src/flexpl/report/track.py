"""Experiment trackers: a finished run's folder (run, compare, sweep, tune, plan --validate) logged to
TensorBoard and MLflow.

The values are read back from the files the run wrote (rounds.csv, rounds_nodes.csv,
rounds_links.csv, summary.json, config.yaml), so a tracker shows exactly the run's results and
tracking can never change a run: per round (step = round) every numeric column of rounds.csv
and each round's own per-node and per-link figures (``round/node/<n>/<column>``,
``round/link/<l>/<column>``); once, the resolved scenario flattened as
parameters, the plan, executor, seed and versions, the summary's numbers as final metrics
(with ``node/<n>/<key>`` per node, ``link/<l>/<key>`` per link and ``to_target/<t>/<key>``),
and the files as artifacts. A folder with several runs (compare, sweep) makes one parent run
and a child run per run folder (MLflow nested runs; TensorBoard one sub-folder per run, so
they overlay). The trackers come from ``--track`` and the scenario's ``tracking:``
(:func:`merge_trackers`).

Logging the same folder again (a resumed or re-run compare) continues the run tracked before
(MLflow: the run tagged ``flexpl.folder`` with that folder) and logs only the rounds it lacks.
A tracker that cannot be reached, or whose package is missing, is one warning line: the
results on disk are already complete when tracking starts.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from flexpl.config.tracking import TRACKERS, tracker_problem
from flexpl.errors import UserError
from flexpl.io.results import ROUND_BILL_FILES
from flexpl.report.runs import discover_runs

KINDS = TRACKERS
HINT = {"tensorboard": "pip install 'flexpl[track]' (or tensorboard)", "mlflow": "pip install 'flexpl[track]' (or mlflow)"}
ARTIFACTS = ("summary.json", "rounds.csv", "config.yaml", "timeline.csv", "report.html", *ROUND_BILL_FILES)
# what a compare, sweep, tune or plan --validate writes beside its run folders
PARENT_ARTIFACTS = ("comparison.csv", "comparison_seeds.csv", "sweep.csv", "sweep_seeds.csv", "tune.csv",
                    "tuned.yaml", "report.html")


@dataclass(frozen=True)
class Tracker:
    """One ``--track KIND[:WHERE]``: ``where`` is TensorBoard's log folder or MLflow's tracking URI (or None)."""

    kind: str
    where: str | None = None


def parse_track(specs: Sequence[str] | None, field: str = "--track") -> list[Tracker]:
    """``--track`` values (``tensorboard[:DIR]``, ``mlflow[:URI]``) as :class:`Tracker` s; a bad one is a UserError.

    ``field`` names where the values came from in the error (``--track``, ``tracking``).
    """
    out = []
    for i, spec in enumerate(specs or ()):
        if (why := tracker_problem(spec)) is not None:
            raise UserError(f"{field}{f'[{i}]' if field != '--track' else ''}: {why}")
        kind, _, where = spec.partition(":")
        out.append(Tracker(kind, where or None))
    return out


def merge_trackers(scenario: Sequence[str] | None, command_line: Sequence[Tracker]) -> list[Tracker]:
    """The scenario's ``tracking:`` entries, then the command line's ``--track`` ones; each tracker once."""
    return list(dict.fromkeys([*parse_track(scenario, "tracking"), *command_line]))


# ---------------------------------------------------------------- what is logged (pure, tested on its own)


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, str) and v.strip():
        try:
            f = float(v)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def _read(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def round_bill_metrics(folder: Path) -> dict[int, dict[str, float]]:
    """Each round's own per-node and per-link figures, from ``rounds_nodes.csv`` and ``rounds_links.csv``:
    ``{round: {"round/node/<name>/<column>": value, "round/link/<name>/<column>": value}}``."""
    out: dict[int, dict[str, float]] = {}
    for name, cols in ROUND_BILL_FILES.items():
        key = cols[1]
        for r in _read(folder / name):
            vals = out.setdefault(int(float(r["round"])), {})
            for k, v in r.items():
                if k not in ("round", key) and (x := _num(v)) is not None:
                    vals[f"round/{key}/{r[key]}/{k}"] = x
    return out


def round_metrics(folder: Path) -> list[tuple[int, dict[str, float]]]:
    """rounds.csv as ``(round, {column: value})``: every numeric column, empty and NaN cells left out;
    with each round's per-node and per-link figures (:func:`round_bill_metrics`) where the run wrote them."""
    per = round_bill_metrics(folder)
    out = []
    for r in _read(folder / "rounds.csv"):
        step = int(float(r["round"]))
        vals = {k: x for k, v in r.items() if k != "round" and (x := _num(v)) is not None}
        out.append((step, {**vals, **per.get(step, {})}))
    return out


def final_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The summary's numbers: top-level as ``final/<key>``, per node, per link and per target nested by ``/``."""
    out: dict[str, float] = {}
    for k, v in summary.items():
        if (x := _num(v)) is not None and not isinstance(v, str):
            out[f"final/{k}"] = x
    for group, prefix in (("per_node", "node"), ("per_link", "link"), ("to_target", "to_target")):
        for name, d in (summary.get(group) or {}).items():
            for k, v in (d or {}).items() if isinstance(d, Mapping) else ():
                if (x := _num(v)) is not None and not isinstance(v, str):
                    out[f"{prefix}/{name}/{k}"] = x
    return out


def flatten(d: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """A nested mapping as dotted ``(key, value as text)`` pairs; lists of scalars stay one value."""
    if isinstance(d, Mapping):
        for k, v in d.items():
            yield from flatten(v, f"{prefix}{k}.")
    elif isinstance(d, list) and any(isinstance(x, Mapping | list) for x in d):
        for i, v in enumerate(d):
            yield from flatten(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), json.dumps(d) if not isinstance(d, str) else d


def run_params(folder: Path, summary: Mapping[str, Any]) -> dict[str, str]:
    """The parameters of one run: its config.yaml flattened, plus plan, executor, seed and versions."""
    import yaml

    try:
        config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    params = dict(flatten(config))
    plan = summary.get("plan") or {}
    params["flexpl.plan"] = str(plan.get("name", "")) if isinstance(plan, Mapping) else str(plan)
    params["flexpl.plan_json"] = json.dumps(plan, sort_keys=True)
    for k in ("strategy", "executor", "seed", "flexpl_version", "torch_version", "scenario_sha256"):
        if k in summary:
            params[f"flexpl.{k}"] = str(summary[k])
    return {k[:250]: v[:6000] for k, v in params.items()}


# ---------------------------------------------------------------- the trackers


def _warn(msg: str) -> None:
    print(f"flexpl: warning: {msg}", file=sys.stderr)


def _reachable(uri: str) -> bool:
    u = urlparse(uri)
    if u.scheme not in ("http", "https"):
        return True
    try:
        with socket.create_connection((u.hostname or "localhost", u.port or (443 if u.scheme == "https" else 80)),
                                      timeout=3):
            return True
    except OSError:
        return False


def _runs(root: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    out = []
    for p in discover_runs(root):
        try:
            summary = json.loads((p / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        out.append((p.relative_to(root).as_posix(), p, summary))
    return out


def _tensorboard(root: Path, logdir: Path, runs: list[tuple[str, Path, dict[str, Any]]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for name, folder, summary in runs:
        sub = logdir if name == "." else logdir / name
        have = _tb_steps(sub)
        w = SummaryWriter(log_dir=str(sub))
        try:
            for step, vals in round_metrics(folder):
                if step in have:
                    continue
                for k, v in vals.items():
                    w.add_scalar(k, v, step)
            if not have:  # once per tracked run
                last = int(summary.get("rounds_completed") or summary.get("rounds") or 0)
                for k, v in final_metrics(summary).items():
                    w.add_scalar(k, v, last)
                params = run_params(folder, summary)
                w.add_text("params", "\n".join(f"    {k} = {v}" for k, v in sorted(params.items())), 0)
        finally:
            w.close()


def _tb_steps(folder: Path) -> set[int]:
    """The rounds already logged in a TensorBoard folder (its ``accuracy`` or ``loss`` steps)."""
    if not folder.is_dir() or not any(f.name.startswith("events.out") for f in folder.iterdir()):
        return set()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    for tag in ("accuracy", "loss", "train_loss"):
        if tag in tags:
            return {e.step for e in acc.Scalars(tag)}
    return set()


def _mlflow(root: Path, uri: str | None, runs: list[tuple[str, Path, dict[str, Any]]]) -> None:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    scenario = str(runs[0][2].get("scenario") or "flexpl")
    exp = client.get_experiment_by_name(f"flexpl/{scenario}")
    exp_id = exp.experiment_id if exp else client.create_experiment(f"flexpl/{scenario}")

    def find_or_create(folder: Path, name: str, parent: str | None) -> tuple[str, bool]:
        key = str(folder.resolve())
        found = client.search_runs([exp_id], filter_string=f"tags.`flexpl.folder` = '{key}'", max_results=1)
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id, False
        tags = {"flexpl.folder": key, "mlflow.runName": name}
        if parent:
            tags["mlflow.parentRunId"] = parent
        return client.create_run(exp_id, tags=tags, run_name=name).info.run_id, True

    def batch(run_id: str, metrics: list[Any] = (), params: list[Any] = (), tags: list[Any] = ()) -> None:
        metrics, params = list(metrics), list(params)
        for i in range(0, max(len(metrics), 1), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i:i + 100])
        if tags:
            client.log_batch(run_id, tags=list(tags))

    def log_one(run_id: str, new: bool, folder: Path, summary: dict[str, Any], ts: int) -> None:
        have = {m.step for m in client.get_metric_history(run_id, "accuracy")} if not new else set()
        metrics = [Metric(k, v, ts, step) for step, vals in round_metrics(folder) if step not in have
                   for k, v in vals.items()]
        if new:
            last = int(summary.get("rounds_completed") or summary.get("rounds") or 0)
            metrics += [Metric(k, v, ts, last) for k, v in final_metrics(summary).items()]
            params = [Param(k, v) for k, v in run_params(folder, summary).items()]
        else:
            params = []
        batch(run_id, metrics, params, [RunTag("flexpl.strategy", str(summary.get("strategy", "")))])
        for f in ARTIFACTS:
            if (folder / f).is_file():
                client.log_artifact(run_id, str(folder / f))
        client.set_terminated(run_id, "FINISHED")

    import time

    ts = int(time.time() * 1000)
    if len(runs) == 1 and runs[0][0] == ".":
        _, folder, summary = runs[0]
        run_id, new = find_or_create(folder, f"{scenario}/{summary.get('strategy')}", None)
        log_one(run_id, new, folder, summary, ts)
        for png in sorted(folder.glob("fig_*.png")):
            client.log_artifact(run_id, str(png), "figures")
        return
    parent, new_parent = find_or_create(root, f"{scenario}/{root.name}", None)
    for name, folder, summary in runs:
        run_id, new = find_or_create(folder, name, parent)
        log_one(run_id, new, folder, summary, ts)
    for f in PARENT_ARTIFACTS:
        if (root / f).is_file():
            client.log_artifact(parent, str(root / f))
    for png in sorted(root.glob("fig_*.png")):
        client.log_artifact(parent, str(png), "figures")
    if new_parent:
        client.log_batch(parent, params=[Param("flexpl.runs", str(len(runs)))])
    client.set_terminated(parent, "FINISHED")


def track_folder(root: str | Path, trackers: Sequence[Tracker]) -> list[str]:
    """Log the finished run(s) under ``root`` to every tracker; returns the warnings printed (one line each).

    Never raises for a tracker's sake: a missing package or an unreachable server is a warning
    line, and the folder's results are left as they are.
    """
    root = Path(root)
    runs = _runs(root) if root.is_dir() else []
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        _warn(msg)

    if not runs:
        if trackers:
            warn(f"--track: no finished run under {root}; nothing tracked")
        return warnings
    for t in trackers:
        try:
            if t.kind == "tensorboard":
                try:
                    import tensorboard  # noqa: F401
                except ImportError:
                    warn(f"--track tensorboard: the tensorboard package is missing; {HINT['tensorboard']}")
                    continue
                _tensorboard(root, Path(t.where) if t.where else root / "tensorboard", runs)
            else:
                try:
                    import mlflow  # noqa: F401
                except ImportError:
                    warn(f"--track mlflow: the mlflow package is missing; {HINT['mlflow']}")
                    continue
                uri = t.where or os.environ.get("MLFLOW_TRACKING_URI")
                if uri and not _reachable(uri):
                    warn(f"--track mlflow: cannot reach {uri}; results kept in {root}, nothing tracked")
                    continue
                with contextlib.redirect_stdout(sys.stderr):  # mlflow prints a "View run" line per run
                    _mlflow(root, uri, runs)
        except Exception as exc:  # a tracker's failure never loses a result
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warn(f"--track {t.kind}: {first[:200]}; results kept in {root}")
    return warnings
