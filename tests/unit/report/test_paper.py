"""flexpl report --format: the paper table from a compare folder with seeds (written here, no training)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flexpl.io.results import config_digest
from flexpl.report.paper import paper_table, render

# two strategies x two seeds: accuracy, bytes and time per seed
RUNS = {
    "fl": [(0.70, 4.0e5, 0.025), (0.80, 4.0e5, 0.035)],
    "sl": [(0.90, 1.8e6, 0.95), (0.94, 1.8e6, 0.95)],
}


def _folder(root: Path) -> Path:
    for strategy, seeds in RUNS.items():
        for k, (acc, nbytes, t) in enumerate(seeds):
            d = root / strategy / f"seed{k}"
            d.mkdir(parents=True)
            (d / "config.yaml").write_text(f"name: x\nseed: {k}\nstrategy: {strategy}\n")
            summary = {"strategy": strategy, "seed": k, "final_accuracy": acc, "bytes_total": nbytes,
                       "sim_time_s": t, "scenario_sha256": config_digest(d)}
            (d / "summary.json").write_text(json.dumps(summary))
            (d / "rounds.csv").write_text(f"round,accuracy\n1,{acc}\n")
    return root


def test_mean_std_and_best(tmp_path: Path) -> None:
    t = paper_table(_folder(tmp_path))
    assert t.names == ["fl", "sl"] and t.seeds == [2, 2]
    m, s = t.cells[0]["final_accuracy"]
    assert m == pytest.approx(75.0) and s == pytest.approx(math.sqrt(50.0))  # percent, sample std
    assert t.cells[1]["bytes_total"] == (pytest.approx(1.8), 0.0)  # MB
    assert t.best == {"final_accuracy": [1], "bytes_total": [0], "sim_time_s": [0]}
    assert "flops_total" not in [c.key for c in t.columns]  # a column no run has is left out


def test_formats(tmp_path: Path) -> None:
    t = paper_table(_folder(tmp_path))
    tex = render(t, "latex")
    assert r"Accuracy (\%)" in tex and r"\textbf{92.00 $\pm$ 2.83}" in tex and r"\toprule" in tex
    md = render(t, "markdown")
    assert "| Strategy | Seeds | Accuracy (%) | Traffic (MB) | Time (s) |" in md
    assert "**0.400 ± 0.000**" in md and "| sl | 2 | **92.00 ± 2.83** |" in md
    rows = list(csv.DictReader(io.StringIO(render(t, "csv"))))
    assert float(rows[1]["Accuracy (%) mean"]) == pytest.approx(92.0)
    assert rows[0]["best"] == "bytes_total;sim_time_s" and rows[1]["best"] == "final_accuracy"


def test_cli_writes_and_prints(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    src = str(Path(__file__).resolve().parents[3] / "src")
    p = subprocess.run([sys.executable, "-m", "flexpl.cli", "report", str(root), "--format", "markdown"],
                       capture_output=True, text=True, env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    assert p.stdout == (root / "table.md").read_text() and "**92.00 ± 2.83**" in p.stdout
    bad = subprocess.run([sys.executable, "-m", "flexpl.cli", "report", str(tmp_path / "nothing"), "--format",
                          "latex"], capture_output=True, text=True, env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_as_frame_and_to_pandas() -> None:
    if os.environ.get("FLEXPL_REQUIRE_TRACK"):  # make test: pandas comes with flexpl[track]
        import pandas as pd
    else:
        pd = pytest.importorskip("pandas")
    from flexpl.api import Result, table

    rows = [{"round": 1, "accuracy": 0.5}, {"round": 2, "accuracy": 0.75, "bytes": 10}]
    df = table(rows, as_frame=True)
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["round", "accuracy", "bytes"]
    assert df["accuracy"].tolist() == [0.5, 0.75]
    r = Result(rows, {})
    assert r.to_pandas()["round"].tolist() == [1, 2]


def test_as_frame_without_pandas_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from flexpl.api import table
    from flexpl.errors import UserError

    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(UserError, match="pandas is not installed; pip install pandas"):
        table([{"a": 1}], as_frame=True)
