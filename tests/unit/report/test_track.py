"""--track's pure parts: parsing the flag, what a run folder turns into (params, per-round and final metrics)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flexpl.errors import UserError
from flexpl.report.track import (
    Tracker,
    final_metrics,
    flatten,
    parse_track,
    round_metrics,
    run_params,
)


def test_parse_track() -> None:
    assert parse_track(["tensorboard", "mlflow:http://h:5000", "tensorboard:tb"]) == [
        Tracker("tensorboard"), Tracker("mlflow", "http://h:5000"), Tracker("tensorboard", "tb")]
    with pytest.raises(UserError, match="unknown tracker 'wandb'"):
        parse_track(["wandb"])
    with pytest.raises(UserError, match="names no URI"):
        parse_track(["mlflow:"])


def test_folder_to_metrics_and_params(tmp_path: Path) -> None:
    (tmp_path / "rounds.csv").write_text("round,accuracy,loss,accuracy_min,bytes\n1,0.5,2.0,,100\n2,0.75,1.5,nan,200\n")
    (tmp_path / "config.yaml").write_text("name: x\ntraining:\n  rounds: 2\nmodel:\n  hidden: [64, 32]\n")
    summary = {"strategy": "fl", "seed": 3, "executor": "vectorized", "bytes_total": 300, "plan": {"name": "fl"},
               "per_node": {"dev0": {"energy_j": 1.5}}, "per_link": {"dev0-server": {"bytes": 300}},
               "to_target": {"acc>=0.7": {"round": 2, "bytes": 300}}, "scenario": "x"}
    assert round_metrics(tmp_path) == [(1, {"accuracy": 0.5, "loss": 2.0, "bytes": 100.0}),
                                       (2, {"accuracy": 0.75, "loss": 1.5, "bytes": 200.0})]
    assert final_metrics(summary) == {"final/seed": 3.0, "final/bytes_total": 300.0, "node/dev0/energy_j": 1.5,
                                      "link/dev0-server/bytes": 300.0, "to_target/acc>=0.7/round": 2.0,
                                      "to_target/acc>=0.7/bytes": 300.0}
    p = run_params(tmp_path, summary)
    assert p["training.rounds"] == "2" and p["model.hidden"] == "[64, 32]" and p["flexpl.plan"] == "fl"
    assert json.loads(p["flexpl.plan_json"]) == {"name": "fl"} and p["flexpl.seed"] == "3"
    assert dict(flatten({"a": [{"b": 1}]})) == {"a.0.b": "1"}


def test_bad_track_flag_exits_2_before_any_work(tmp_path: Path) -> None:
    src = str(Path(__file__).resolve().parents[3] / "src")
    p = subprocess.run([sys.executable, "-m", "flexpl.cli", "run", "digits-star", "--track", "wandb",
                        "--out", str(tmp_path / "r")], capture_output=True, text=True,
                       env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2 and "--track: unknown tracker 'wandb'" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "r").exists()
