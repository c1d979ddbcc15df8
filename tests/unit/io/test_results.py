"""results.RunWriter: the one way a run folder is written (simulator and dist backends alike)."""

from __future__ import annotations

import csv
import json
import os

import pytest
import yaml

from flexpl.costs.trace import timeline_rows
from flexpl.errors import UserError
from flexpl.io import results
from flexpl.io.results import IN_PROGRESS, RunWriter

CONFIG = {"name": "toy", "seed": 3, "training": {"rounds": 3}}


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def _writes(monkeypatch) -> list[str]:
    """Names of the files written through results.atomic_write, in order."""
    order: list[str] = []
    real = results.atomic_write

    def recording(path, data):
        order.append(os.path.basename(path))
        real(path, data)
    monkeypatch.setattr(results, "atomic_write", recording)
    return order


def test_config_once_rounds_as_they_finish_summary_last(tmp_path, monkeypatch):
    out = tmp_path / "run"
    order = _writes(monkeypatch)
    w = RunWriter(out, "abc", CONFIG).begin()
    assert yaml.safe_load((out / "config.yaml").read_text()) == CONFIG
    assert json.loads((out / IN_PROGRESS).read_text())["scenario_sha256"] == "abc"
    for r in (1, 2):
        w.round({"round": r, "accuracy": 0.5 + r / 10, "bytes": 100 * r})
        assert [int(x["round"]) for x in _rows(out / "rounds.csv")] == list(range(1, r + 1))  # survives a crash now
        assert not (out / "summary.json").exists()
    w.finish({"rounds": 2, "scenario_sha256": "abc"})
    # config.yaml once, at begin (finish does not write it again: seconds for 10,000 nodes)
    assert order == [IN_PROGRESS, "config.yaml", "rounds.csv", "rounds.csv", "rounds.csv", "summary.json"]
    assert not (out / IN_PROGRESS).exists()  # a finished run
    assert _rows(out / "rounds.csv") == [{"round": "1", "accuracy": "0.6", "bytes": "100"},
                                         {"round": "2", "accuracy": "0.7", "bytes": "200"}]


def test_rounds_csv_takes_columns_that_appear_later(tmp_path):
    w = RunWriter(tmp_path, "abc", CONFIG).begin()
    w.round({"round": 1, "accuracy": 0.5})
    w.round({"round": 2, "accuracy": 0.6, "val_accuracy": 0.4})
    text = (tmp_path / "rounds.csv").read_text()
    assert text == "round,accuracy,val_accuracy\n1,0.5,\n2,0.6,0.4\n"


def test_begin_removes_an_earlier_runs_results_and_resume_keeps_its_rounds(tmp_path):
    for name in ("summary.json", "timeline.csv", "rounds.csv", "checkpoint.pt", "report.html", "fig_a.png"):
        (tmp_path / name).write_text("old")
    RunWriter(tmp_path, "abc", CONFIG).begin(resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [IN_PROGRESS, "checkpoint.pt", "config.yaml",
                                                          "rounds.csv"]
    RunWriter(tmp_path, "abc", CONFIG).begin()
    assert sorted(p.name for p in tmp_path.iterdir()) == [IN_PROGRESS, "config.yaml"]


def test_a_summary_that_cannot_be_written_leaves_no_summary_and_the_run_marked(tmp_path, monkeypatch):
    w = RunWriter(tmp_path, "abc", CONFIG).begin()
    w.round({"round": 1, "accuracy": 0.5})
    real = os.replace

    def full_disk(src, dst):
        if os.path.basename(dst) == "summary.json":
            raise OSError(28, "No space left on device")
        real(src, dst)
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(UserError, match="no space left on the device writing .*summary.json.* bytes needed"):
        w.finish({"rounds": 1})  # one line for the command line (exit 2), not a traceback
    assert not (tmp_path / "summary.json").exists()  # never half a summary
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    assert (tmp_path / IN_PROGRESS).exists()  # readers see an unfinished run


def test_finish_writes_the_rows_it_is_given(tmp_path):
    w = RunWriter(tmp_path, "abc", CONFIG).begin()
    w.round({"round": 1, "accuracy": 0.5})
    w.finish({"rounds": 2}, [{"round": 1, "accuracy": 0.5}, {"round": 2, "accuracy": float("nan")}])
    assert [r["round"] for r in _rows(tmp_path / "rounds.csv")] == ["1", "2"]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"rounds": 2}


def test_timeline_rows_one_per_action():
    from flexpl.costs.trace import COMPUTE, HOP

    class Trace:  # the columns of a costs.trace.Trace that the timeline reads
        kind = [COMPUTE, HOP]
        resource = ["dev0", "dev0-edge"]
        what = ["fwd", "activation"]
        label = ["s0r0", "s0r0"]
        src = ["dev0", "dev0"]
        dst = ["dev0", "edge"]
        amount = [1000, 64]

        def __len__(self):
            return 2

    rows = timeline_rows(Trace(), [0.0, 1.0], [1.0, 1.5], round_index=4)
    assert rows == [
        {"round": 4, "resource": "dev0", "resource_kind": "node", "what": "fwd", "label": "s0r0", "src": "dev0",
         "dst": "dev0", "start_s": 0.0, "end_s": 1.0, "flops": 1000, "bytes": 0},
        {"round": 4, "resource": "dev0-edge", "resource_kind": "link", "what": "activation", "label": "s0r0",
         "src": "dev0", "dst": "edge", "start_s": 1.0, "end_s": 1.5, "flops": 0, "bytes": 64},
    ]


def test_a_simulator_run_writes_through_the_writer(tmp_path, monkeypatch):
    """flexpl run (runs.run_one): config first, a rounds.csv per round, timeline, summary.json last."""
    from flexpl.studies.run_one import run_one

    order = _writes(monkeypatch)
    s = run_one("digits-star", ["training.rounds=2", "training.max_steps_per_round=1"], "fl", None,
                tmp_path / "run", quiet=True, show_data=False)
    files = [n for n in order if n != "checkpoint.pt"]
    # rounds_nodes.csv and rounds_links.csv start with round 1's rows (before its checkpoint), then are appended
    assert files == [IN_PROGRESS, "config.yaml", "rounds_nodes.csv", "rounds_links.csv", "rounds.csv", "rounds.csv",
                     "timeline.csv", "rounds.csv", "summary.json"]
    assert {r["round"] for r in _rows(tmp_path / "run" / "rounds_links.csv")} == {"1", "2"}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rounds"] == s["rounds"] == 2
    assert len(_rows(tmp_path / "run" / "timeline.csv")) > 0


def test_config_yaml_is_pyyamls_safe_dump_text_for_every_builtin_scenario():
    """dump_yaml (libyaml's emitter when present) writes the same text as yaml.safe_dump."""
    from flexpl.config.load import builtin_scenarios
    from flexpl.config.scenario import load_scenario

    for name in builtin_scenarios():
        resolved = load_scenario(name).resolved()
        assert results.dump_yaml(resolved) == yaml.safe_dump(resolved, sort_keys=False), name
    odd = {"s": "a long line " * 20, "u": "é ü", "f": [1.5e-300, float("inf"), -0.0], "k": {3: None, "y": True}}
    assert results.dump_yaml(odd) == yaml.safe_dump(odd, sort_keys=False)


def test_config_yaml_is_dumped_once_and_written_once(tmp_path, monkeypatch):
    dumps = []
    real = results.dump_yaml
    monkeypatch.setattr(results, "dump_yaml", lambda obj: dumps.append(1) or real(obj))
    order = _writes(monkeypatch)
    w = RunWriter(tmp_path / "r", "abc", CONFIG).begin()
    w.round({"round": 1, "accuracy": 0.5})
    w.finish({"scenario_sha256": "abc"})
    assert len(dumps) == 1 and order.count("config.yaml") == 1
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text()) == CONFIG


def test_round_bill_appends_and_a_resumed_writer_drops_the_rounds_it_runs_again(tmp_path):
    """rounds_nodes.csv / rounds_links.csv grow by a round at a time; a resumed writer keeps only earlier rounds
    (a row the killed run appended after its last checkpoint, or half a line, goes)."""
    out = tmp_path / "run"

    def node(r, n, e):
        return {"round": r, "node": n, "energy_j": e, "flops": 10 * r}

    w = RunWriter(out, "abc", CONFIG).begin()
    w.round_bill([node(1, "a", 0.5), node(1, "b", 0.25)], [{"round": 1, "link": "a-b", "bytes": 8}])
    w.round_bill([node(2, "a", 0.5)], [])
    w.round_bill([node(3, "b", 0.125)], [{"round": 3, "link": "a-b", "bytes": 4}])
    with open(out / "rounds_nodes.csv", "a") as f:
        f.write("4,a,0.")  # killed mid-append
    assert [(r["round"], r["node"]) for r in _rows(out / "rounds_nodes.csv")][:4] == [
        ("1", "a"), ("1", "b"), ("2", "a"), ("3", "b")]
    assert _rows(out / "rounds_links.csv")[0] == {"round": "1", "link": "a-b", "bytes": "8", "busy_s": "",
                                                  "energy_j": ""}
    w2 = RunWriter(out, "abc", CONFIG).begin(resume=True)  # the checkpoint was round 2's: round 3 runs again
    w2.round_bill([node(3, "a", 1.0)], [{"round": 3, "link": "a-b", "bytes": 6}])
    assert [(r["round"], r["node"], r["energy_j"]) for r in _rows(out / "rounds_nodes.csv")] == [
        ("1", "a", "0.5"), ("1", "b", "0.25"), ("2", "a", "0.5"), ("3", "a", "1.0")]
    assert [(r["round"], r["bytes"]) for r in _rows(out / "rounds_links.csv")] == [("1", "8"), ("3", "6")]
    RunWriter(out, "abc", CONFIG).begin()  # a fresh run into the folder removes them
    assert not (out / "rounds_nodes.csv").exists() and not (out / "rounds_links.csv").exists()
