"""Writing results atomically: summary.json, rounds.csv, config.yaml (and comparison.csv).

:class:`RunWriter` is the one way a run folder is written, by the simulator path
(:func:`flexpl.studies.run_one.run_one`) and the distributed backend (rank 0 of
:mod:`flexpl.dist.worker`) alike.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from flexpl.errors import UserError

# The summary.json fields the run, compare and sweep tables show, in order.
SUMMARY_COLUMNS = ["strategy", "final_accuracy", "accuracy_min", "accuracy_ensemble", "bytes_total",
                   "energy_j_total", "sim_time_s", "flops_total", "params_total", "wall_s"]


def prepare_out_dir(path: str | Path) -> Path:
    """Create the output folder (and parents); a path that is a file is a user error."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out: '{p}' is a file, not a folder; choose another path")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out: cannot create folder '{p}': {exc.strerror}") from None
    return p


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    p = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, p)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(no_space_message(p, len(data.encode() if isinstance(data, str) else data))) from None
        raise


def no_space_message(path: Path, needed: int) -> str:
    """One line for a full disk: the file, the bytes it needs, the bytes free, and how to go on."""
    try:
        st = os.statvfs(path.parent)
        free = f"{st.f_bavail * st.f_frsize:,} bytes free"
    except OSError:
        free = "free space unknown"
    return (f"no space left on the device writing '{path}' ({needed:,} bytes needed, {free}); the previous "
            f"version of the file is kept; free space and rerun with --resume {path.parent}")


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN/inf become null)."""
    atomic_write(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: list[str] | None = None) -> None:
    """Atomically write ``rows`` as CSV with ``columns`` (default: keys of the first row, then new keys)."""
    rows = list(rows)
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in columns})
    atomic_write(path, buf.getvalue())


# libyaml's parser where PyYAML has it: the same data as the pure-Python one, several times faster
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def dump_yaml(obj: Any) -> str:
    """``yaml.safe_dump(obj, sort_keys=False)``, by libyaml's emitter when PyYAML has it (the same text, faster:
    a scenario of 1,000 nodes takes 0.7 s in pure Python, 10,000 phones seconds)."""
    return yaml.dump(obj, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def write_yaml(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as YAML."""
    atomic_write(path, dump_yaml(obj))


def write_run(out: Path, summary: dict[str, Any], rounds: list[dict[str, Any]],
              config: dict[str, Any] | str | None) -> None:
    """The three files of a run: rounds.csv, config.yaml, then summary.json (written last: its presence marks a finished run).

    ``config``: the scenario, or its YAML text; None: config.yaml is already there (written by
    :meth:`RunWriter.begin`). Then the ``IN_PROGRESS`` marker of :func:`begin_run` goes: the
    folder holds a finished run.
    """
    write_csv(out / "rounds.csv", rounds)
    if isinstance(config, str):
        atomic_write(out / "config.yaml", config)
    elif config is not None:
        write_yaml(out / "config.yaml", config)
    write_json(out / "summary.json", summary)
    (out / IN_PROGRESS).unlink(missing_ok=True)


# [Note: stale results] A rerun into a folder that holds an earlier run's results must not
# leave them beside its own config.yaml when it dies. So a run first writes IN_PROGRESS
# (atomically), then removes the earlier run's results, and only then writes anything of its
# own; summary.json comes last and IN_PROGRESS goes after it. Readers (report, sweep) also
# check that a summary's scenario_sha256 is the digest of the config.yaml beside it.
IN_PROGRESS = "IN_PROGRESS"
# What a run (and a report built in its folder) writes; an earlier run's copies are removed.
RUN_FILES = ("summary.json", "rounds.csv", "timeline.csv", "checkpoint.pt", "report.html", "rounds_nodes.csv",
             "rounds_links.csv")
# each round's own per-node and per-link figures (RunWriter.round_bill; flexpl.costs.bill.node_link_totals):
# file -> its columns (summary.json's per_node / per_link keys)
ROUND_BILL_FILES = {
    "rounds_nodes.csv": ("round", "node", "energy_j", "energy_j_compute", "energy_j_comm", "energy_j_idle", "flops",
                         "bytes_sent", "bytes_received", "busy_s", "eval_flops", "eval_energy_j"),
    "rounds_links.csv": ("round", "link", "bytes", "busy_s", "energy_j"),
}


# the dist backend's checkpoints: a file per rank and round and rank 0's commit marker (flexpl.dist.checkpoint)
DIST_CHECKPOINTS = "checkpoint"
_DIST_CHECKPOINT_FILE = re.compile(r"rank\d+-round\d+\.pt|committed\.json|\..+")


def _remove_dist_checkpoints(folder: Path) -> None:
    """An earlier dist run's checkpoint files (and their temporary files) removed; the folder too if then empty."""
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if _DIST_CHECKPOINT_FILE.fullmatch(f.name) and f.is_file():
            f.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # something else lives there: left alone
        folder.rmdir()


def begin_run(out: Path, scenario_sha256: str, resume: bool = False) -> None:
    """Mark ``out`` as holding a run in progress, then remove an earlier run's results.

    Call it after every input check and before the first write into ``out``. With
    ``resume``, the checkpoint (the simulator's file, the dist backend's folder) and rounds.csv
    stay (the run continues from them).
    """
    import datetime as _dt

    write_json(out / IN_PROGRESS, {"scenario_sha256": scenario_sha256, "pid": os.getpid(),
                                   "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    keep = ("checkpoint.pt", "rounds.csv", *ROUND_BILL_FILES) if resume else ()
    for name in RUN_FILES:
        if name not in keep:
            (out / name).unlink(missing_ok=True)
    if not resume:
        _remove_dist_checkpoints(out / DIST_CHECKPOINTS)
    for fig in out.glob("fig_*.png"):  # an earlier report's figures
        fig.unlink()


def config_digest(folder: Path) -> str | None:
    """SHA-256 of the scenario in ``folder/config.yaml``, as ``Scenario.digest`` computes it (None if unreadable)."""
    try:
        data = yaml.load((folder / "config.yaml").read_text(), Loader=_LOADER)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if isinstance(data, dict):  # tracking never changes a result: not part of the digest (Scenario.digest)
        data.pop("tracking", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def stale_reason(folder: Path, summary: Mapping[str, Any]) -> str | None:
    """Why ``summary`` (read from ``folder/summary.json``) is not the result of the run in ``folder``, or None.

    A summary counts only when its ``scenario_sha256`` is the digest of the folder's
    config.yaml (see [Note: stale results]).
    """
    recorded = summary.get("scenario_sha256")
    if not recorded:
        return "its summary.json records no scenario_sha256"
    digest = config_digest(folder)
    if digest is None:
        return "it holds no readable config.yaml beside summary.json"
    if digest != recorded:
        return ("its summary.json is from another scenario than its config.yaml (an earlier run's "
                "results beside a rerun that did not finish); rerun it")
    return None


class RunWriter:
    """The files of one run folder, written in one order by every backend.

    1. :meth:`begin`: the ``IN_PROGRESS`` marker, an earlier run's results removed (see
       [Note: stale results]), then ``config.yaml`` (the resolved scenario), once;
    2. :meth:`round` after every finished round: the row is appended and ``rounds.csv``
       rewritten atomically, so the rounds completed so far survive a crash;
    3. :meth:`round_bill` after every round (simulator): the round's own per-node and per-link
       figures appended to ``rounds_nodes.csv`` and ``rounds_links.csv`` (appended, not rewritten:
       10,000 nodes over hundreds of rounds; a resumed run first drops the rounds it runs again);
    3. :meth:`timeline`: ``timeline.csv``, the last round's actions on the virtual clock;
    4. :meth:`finish`: ``rounds.csv``, ``config.yaml`` (unless :meth:`begin` wrote it), then ``summary.json`` last (its
       presence marks a finished run), and the ``IN_PROGRESS`` marker goes.

    Every file but the two appended ones is written atomically (a temporary file renamed over it).
    """

    def __init__(self, out: str | Path, scenario_sha256: str, config: Mapping[str, Any]) -> None:
        self.out = Path(out)
        self.scenario_sha256 = scenario_sha256
        self._config_written = False
        self.config = config
        self.rows: list[dict[str, Any]] = []
        self._bill_started = False

    def begin(self, resume: bool = False) -> RunWriter:
        """Create the folder, mark the run in progress, write config.yaml (``resume``: keep checkpoint and rounds)."""
        self.out = prepare_out_dir(self.out)
        begin_run(self.out, self.scenario_sha256, resume=resume)
        atomic_write(self.out / "config.yaml", dump_yaml(dict(self.config)))
        self._config_written = True  # finish need not write it again (seconds for 10,000 nodes)
        return self

    def round(self, row: dict[str, Any]) -> None:
        """Append one finished round's row and rewrite rounds.csv with every row so far."""
        self.rows.append(row)
        write_csv(self.out / "rounds.csv", self.rows)

    def round_bill(self, nodes: list[dict[str, Any]], links: list[dict[str, Any]]) -> None:
        """Append one round's per-node and per-link rows (``flexpl.costs.bill.round_rows``) to
        ``rounds_nodes.csv`` and ``rounds_links.csv``.

        The first call of a writer starts both files: a fresh run's are gone already
        (:func:`begin_run`); a resumed run's keep only the rounds before the first one given here
        (a round the killed run appended after its last checkpoint is run, and appended, again).
        The rows of a round are appended before that round's checkpoint is saved, so a checkpoint
        never stands for a round whose rows are missing.
        """
        rnd = next((r["round"] for r in (*nodes, *links)), None)
        for (name, cols), rows in zip(ROUND_BILL_FILES.items(), (nodes, links)):
            columns = list(cols)
            path = self.out / name
            if not self._bill_started:
                kept = []
                if rnd is not None and path.is_file():
                    with open(path, newline="") as f:
                        kept = [r for r in csv.DictReader(f) if None not in r.values()
                                and r.get("round", "").isdigit() and int(r["round"]) < rnd]
                write_csv(path, kept, columns)
            if rows:
                buf = io.StringIO()
                csv.DictWriter(buf, fieldnames=columns, lineterminator="\n").writerows(rows)
                size = path.stat().st_size
                try:
                    with open(path, "a", newline="") as f:
                        f.write(buf.getvalue())
                except OSError as exc:
                    with contextlib.suppress(OSError):  # no half round left behind
                        os.truncate(path, size)
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise UserError(no_space_message(path, len(buf.getvalue()))) from None
                    raise
        if rnd is not None:
            self._bill_started = True

    def timeline(self, rows: list[dict[str, Any]]) -> None:
        """Write timeline.csv: one row per action of a round's trace (``flexpl.costs.trace.timeline_rows``)."""
        write_csv(self.out / "timeline.csv", rows)

    def finish(self, summary: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> None:
        """Write the finished run: rounds.csv (``rows``, default the rows seen), config.yaml, summary.json last."""
        write_run(self.out, summary, self.rows if rows is None else rows,
                  None if self._config_written else dict(self.config))
