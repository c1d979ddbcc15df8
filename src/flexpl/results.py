"""Writing results atomically: summary.json, rounds.csv, config.yaml (and comparison.csv)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from flexpl.errors import UserError


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
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def write_yaml(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as YAML."""
    atomic_write(path, yaml.safe_dump(obj, sort_keys=False))


def write_run(out: Path, summary: dict[str, Any], rounds: list[dict[str, Any]], config: dict[str, Any]) -> None:
    """The three files of a run: rounds.csv, config.yaml, then summary.json (written last: its presence marks a finished run)."""
    write_csv(out / "rounds.csv", rounds)
    write_yaml(out / "config.yaml", config)
    write_json(out / "summary.json", summary)
