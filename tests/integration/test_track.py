"""--track: a real MLflow tracking server and real TensorBoard event files, read back and compared to the files.

One compare (digits-star, 2 rounds, fl and fpl) is tracked to both; the values read back through
``MlflowClient`` must equal rounds.csv and summary.json exactly (TensorBoard keeps float32, so its
values must equal float32 of the file's). Logging the same folder again (what a resumed or re-run
compare does) keeps one run per strategy with every round once, and an unreachable URI is one
warning line with the results folder complete. The per-round per-node and per-link figures
(rounds_nodes.csv, rounds_links.csv) are tracked exactly and sum to summary.json's totals; tune
and plan --validate track a child per cell or plan; a scenario's ``tracking:`` adds to --track;
a run killed with kill -9 and resumed is tracked once. One MLflow server serves the module
(it takes most of the module's time to start); the commands run in this process where no kill
is needed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from flexpl.report.track import final_metrics, parse_track, track_folder

if not os.environ.get("FLEXPL_REQUIRE_TRACK"):  # make test sets it: there a missing package fails, not skips
    pytest.importorskip("mlflow", reason="needs flexpl[track] (make setup installs it)")
    pytest.importorskip("tensorboard", reason="needs flexpl[track] (make setup installs it)")
from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(exe), "server", "--backend-store-uri", f"sqlite:///{d / 'db.sqlite'}",
                             "--default-artifact-root", str(d / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            # no job runner: it starts five more MLflow processes a tracking test never uses
                            env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, "mlflow server exited"
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer in 120 s")
        yield uri
    finally:  # the whole process group (the server's workers too), without waiting out a graceful shutdown
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def tracked(server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    from flexpl.cli import main

    d = tmp_path_factory.mktemp("compare")
    out, tb = d / "cmp", d / "tb"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # in this process: no second torch import
        rc = main(["compare", "digits-star", "--strategies", "fl,fpl", "--set", "training.rounds=2",
                   "--set", "training.max_steps_per_round=2", "--seed", "0", "--out", str(out), "--quiet",
                   "--track", f"mlflow:{server}", "--track", f"tensorboard:{tb}"])
    assert rc == 0, err.getvalue()
    assert "warning" not in err.getvalue(), err.getvalue()
    return server, out, tb


def _rounds(folder: Path) -> list[dict[str, str]]:
    with open(folder / "rounds.csv", newline="") as f:
        return list(csv.DictReader(f))


def _children(client: MlflowClient, out: Path) -> tuple[object, dict[str, object]]:
    exp = client.get_experiment_by_name("flexpl/digits-star")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = [r for r in runs if r.data.tags.get("flexpl.folder") == str(out.resolve())]
    assert len(parent) == 1
    kids = {r.data.tags["mlflow.runName"]: r for r in runs
            if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id}
    return parent[0], kids


def test_mlflow_equals_the_files(tracked: tuple[str, Path, Path]) -> None:
    uri, out, _ = tracked
    client = MlflowClient(tracking_uri=uri)
    parent, kids = _children(client, out)
    assert sorted(kids) == ["fl", "fpl"]
    assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    for name, run in kids.items():
        rows = _rounds(out / name)
        summary = json.loads((out / name / "summary.json").read_text())
        rid = run.info.run_id
        for col in [c for c in rows[0] if c != "round" and rows[0][c] not in ("", "nan")]:
            hist = sorted((m.step, m.value) for m in client.get_metric_history(rid, col))
            assert hist == [(int(r["round"]), float(r[col])) for r in rows], col
        finals = final_metrics(summary)
        assert finals["final/bytes_total"] == summary["bytes_total"]
        assert any(k.startswith("link/") for k in finals) and any(k.startswith("node/") for k in finals)
        for k, v in finals.items():
            assert run.data.metrics[k] == v, k
        assert run.data.params["flexpl.strategy"] == name
        assert run.data.params["flexpl.executor"] == summary["executor"]
        assert run.data.params["training.rounds"] == "2"
        arts = {a.path for a in client.list_artifacts(rid)}
        assert {"summary.json", "rounds.csv", "config.yaml"} <= arts


def test_tensorboard_equals_the_files(tracked: tuple[str, Path, Path]) -> None:
    _, out, tb = tracked
    for name in ("fl", "fpl"):
        acc = EventAccumulator(str(tb / name), size_guidance={"scalars": 0})
        acc.Reload()
        rows = _rounds(out / name)
        for col in [c for c in rows[0] if c != "round" and rows[0][c] not in ("", "nan")]:
            got = [(e.step, e.value) for e in acc.Scalars(col)]
            assert got == [(int(r["round"]), float(np.float32(float(r[col])))) for r in rows], col


def test_tracking_again_continues_the_same_runs(tracked: tuple[str, Path, Path]) -> None:
    uri, out, tb = tracked
    assert track_folder(out, parse_track([f"mlflow:{uri}", f"tensorboard:{tb}"])) == []
    client = MlflowClient(tracking_uri=uri)
    _, kids = _children(client, out)
    assert sorted(kids) == ["fl", "fpl"]  # no new runs
    for name, run in kids.items():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")]
        assert sorted(steps) == [1, 2]  # every round once
        acc = EventAccumulator(str(tb / name), size_guidance={"scalars": 0})
        acc.Reload()
        assert [e.step for e in acc.Scalars("accuracy")] == [1, 2]


def test_unreachable_uri_is_one_warning(tracked: tuple[str, Path, Path], capsys: pytest.CaptureFixture) -> None:
    _, out, _ = tracked
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    warnings = track_folder(out, parse_track([f"mlflow:http://127.0.0.1:{_free_port()}"]))
    assert len(warnings) == 1 and "cannot reach" in warnings[0]
    assert capsys.readouterr().err.count("\n") == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before


def test_sweep_tracks_one_folder_per_cell(tmp_path: Path) -> None:
    out, tb = tmp_path / "sweep", tmp_path / "tb"
    _cli("sweep", "digits-star", "--grid", "strategy=fl,fpl", "--set", "training.rounds=1",
         "--set", "training.max_steps_per_round=2", "--out", str(out), "--quiet", "--track", f"tensorboard:{tb}")
    cells = sorted(d.name for d in out.iterdir() if (d / "summary.json").is_file())
    assert len(cells) == 2 and sorted(d.name for d in tb.iterdir()) == cells
    for cell in cells:
        acc = EventAccumulator(str(tb / cell), size_guidance={"scalars": 0})
        acc.Reload()
        row = _rounds(out / cell)[0]
        assert [(e.step, e.value) for e in acc.Scalars("bytes")] == [(1, float(np.float32(float(row["bytes"]))))]


def _cli(*args: str) -> None:
    """``flexpl ARGS`` in this process (no second torch import); it must exit 0."""
    from flexpl.cli import main

    assert main(list(args)) == 0


def _tb_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tune_tracks_one_folder_per_cell(tmp_path: Path) -> None:
    out, tb = tmp_path / "tune", tmp_path / "tb"
    _cli("tune", "digits-star", "--strategies", "fl", "--grid", "training.optimizer.lr=0.01,0.05",
         "--set", "training.rounds=1", "--set", "training.max_steps_per_round=2", "--out", str(out), "--quiet",
         "--track", f"tensorboard:{tb}")
    cells = sorted(d.name for d in out.iterdir() if (d / "summary.json").is_file())
    assert len(cells) == 2 and sorted(d.name for d in tb.iterdir()) == cells
    for cell in cells:
        row = _rounds(out / cell)[0]
        assert _tb_scalars(tb / cell, "bytes") == [(1, float(np.float32(float(row["bytes"]))))]
        # tune scores on held-out training data: val_accuracy is there, test accuracy is not
        assert _tb_scalars(tb / cell, "val_accuracy") == [(1, float(np.float32(float(row["val_accuracy"]))))]


def test_plan_validate_tracks_each_validated_plan(server: str, tmp_path: Path) -> None:
    out, tb = tmp_path / "plan", tmp_path / "tb"
    _cli("plan", "digits-star", "--set", "training.rounds=2", "--set", "training.max_steps_per_round=2",
         "--validate", "1", "--out", str(out), "--quiet", "--track", f"mlflow:{server}", "--track", f"tensorboard:{tb}")
    with open(out / "plans.csv", newline="") as f:
        validated = [r for r in csv.DictReader(f) if r["validated_rounds"]]
    (folder,) = [d for d in (out / "validate").iterdir() if d.is_dir()]
    summary = json.loads((folder / "summary.json").read_text())
    assert len(validated) == 1 and float(validated[0]["accuracy"]) == summary["final_accuracy"]
    assert summary["strategy"] == validated[0]["strategy"]
    client = MlflowClient(tracking_uri=server)
    _, kids = _children(client, out / "validate")
    assert list(kids) == [folder.name]
    rows = _rounds(folder)
    hist = sorted((m.step, m.value) for m in client.get_metric_history(kids[folder.name].info.run_id, "bytes"))
    assert hist == [(int(r["round"]), float(r["bytes"])) for r in rows]
    assert [s for s, _ in _tb_scalars(tb / folder.name, "accuracy")] == [1, 2]


def test_plan_track_without_validate_is_one_line(capsys: pytest.CaptureFixture) -> None:
    from flexpl.cli import main

    assert main(["plan", "digits-star", "--track", "tensorboard"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_scenario_tracking_adds_to_track_and_leaves_the_hash(tmp_path: Path) -> None:
    """``tracking:`` in the scenario and the same ``--track``: tracked once; the scenario hashes as untracked."""
    from flexpl.config.scenario import load_scenario
    from flexpl.io.results import stale_reason

    out, tb = tmp_path / "run", tmp_path / "tb"
    sets = ["--set", "training.rounds=1", "--set", "training.max_steps_per_round=2"]
    _cli("run", "digits-star", *sets, "--set", f'tracking=["tensorboard:{tb}"]', "--track", f"tensorboard:{tb}",
         "--out", str(out), "--quiet")
    assert len([f for f in tb.iterdir() if f.name.startswith("events.out")]) == 1
    assert [s for s, _ in _tb_scalars(tb, "accuracy")] == [1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario_sha256"] == load_scenario("digits-star", [s for s in sets if s != "--set"]).digest()
    assert stale_reason(out, summary) is None
    assert f"tensorboard:{tb}" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("value, message", [
    ("[foo]", "tracking[0]: unknown tracker 'foo'; use tensorboard[:DIR] or mlflow[:URI]"),
    ('["mlflow:"]', "tracking[0]: 'mlflow:' names no URI after ':'"),
    ("tensorboard", "tracking: must be a list"),
])
@pytest.mark.parametrize("command", ["run", "sweep", "tune"])
def test_bad_scenario_tracking_is_one_line_exit_2(command: str, value: str, message: str,
                                                 capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from flexpl.cli import main

    assert main([command, "digits-star", "--set", f"tracking={value}", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0
    assert not (tmp_path / "x").exists()


def test_merge_trackers_keeps_each_once() -> None:
    from flexpl.report.track import Tracker, merge_trackers

    got = merge_trackers(["tensorboard", "mlflow:http://h:1"], parse_track(["mlflow:http://h:1", "tensorboard:d"]))
    assert got == [Tracker("tensorboard"), Tracker("mlflow", "http://h:1"), Tracker("tensorboard", "d")]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_per_round_node_energy_and_link_bytes(tracked: tuple[str, Path, Path]) -> None:
    """rounds_nodes.csv / rounds_links.csv: tracked per round exactly as written, summing to summary.json's totals."""
    uri, out, tb = tracked
    client = MlflowClient(tracking_uri=uri)
    _, kids = _children(client, out)
    for name in ("fl", "fpl"):
        summary = json.loads((out / name / "summary.json").read_text())
        acc = EventAccumulator(str(tb / name), size_guidance={"scalars": 0})
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        for file, key, group, mlflow_col in (("rounds_nodes.csv", "node", "per_node", "energy_j"),
                                             ("rounds_links.csv", "link", "per_link", "bytes")):
            rows = _csv(out / name / file)
            assert {r[key] for r in rows} == set(summary[group])  # every node and link did something
            for who, total in summary[group].items():
                mine = [r for r in rows if r[key] == who]
                for col in [c for c in rows[0] if c not in ("round", key)]:
                    assert math.isclose(sum(float(r[col]) for r in mine), total[col], rel_tol=1e-9, abs_tol=1e-12)
                    tag = f"round/{key}/{who}/{col}"
                    assert tag in tags
                    assert [(e.step, e.value) for e in acc.Scalars(tag)] == \
                        [(int(r["round"]), float(np.float32(float(r[col])))) for r in mine], tag
                hist = sorted((m.step, m.value) for m in client.get_metric_history(
                    kids[name].info.run_id, f"round/{key}/{who}/{mlflow_col}"))
                assert hist == [(int(r["round"]), float(r[mlflow_col])) for r in mine]


def test_killed_and_resumed_run_is_tracked_once(tmp_path: Path, flexpl_forks) -> None:
    """kill -9 in round 2 (after round 1's checkpoint), then --resume with the same --track: one tracked run,
    every round once, and the per-round files hold every round once. (TensorBoard only: MLflow's
    continuing of a run tracked again is test_tracking_again_continues_the_same_runs.)"""
    out, tb = tmp_path / "run", tmp_path / "tb"
    track = ["--track", f"tensorboard:{tb}"]
    # a process of its own, forked from a server that imported the package (tests/forkserver.py)
    p = flexpl_forks.completed(["run", "digits-star", "--set", "training.rounds=2", "--set",
                                "training.max_steps_per_round=2", "--out", str(out), "--quiet", *track],
                               timeout=600, env={"FLEXPL_TEST_KILL_AT": "2:1"})
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert not (out / "summary.json").exists() and [r["round"] for r in _rounds(out)] == ["1"]
    _cli("run", "--resume", str(out), "--quiet", *track)
    rounds = [int(r["round"]) for r in _rounds(out)]
    assert rounds == [1, 2]
    nodes = _csv(out / "rounds_nodes.csv")
    assert sorted({(r["round"], r["node"]) for r in nodes}) == sorted((r["round"], r["node"]) for r in nodes)
    assert {int(r["round"]) for r in nodes} == {1, 2}
    assert len([f for f in tb.iterdir() if f.name.startswith("events.out")]) == 1
    assert [s for s, _ in _tb_scalars(tb, "accuracy")] == rounds
    assert [s for s, _ in _tb_scalars(tb, "round/link/dev0-server/bytes")] == rounds
