"""The command line: results files, summaries, and one-line errors with exit code 2."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flexpl.cli import main

SUMMARY_KEYS = ["scenario", "strategy", "seed", "rounds", "final_accuracy", "final_loss", "flops_total",
                "bytes_total", "sim_time_s", "energy_j_total", "energy_j_compute", "energy_j_comm",
                "model_params", "model_bytes", "params_total", "wall_s", "per_node", "per_link"]

GOOD = {
    "name": "tiny", "seed": 0, "data": {"dataset": "digits", "partition": {"kind": "iid"}},
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"rounds": 1, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.1}},
    "nodes": [{"name": "srv", "profile": "edge-server"},
              {"name": "a", "profile": "rpi4", "holds_data": True},
              {"name": "b", "profile": "phone", "holds_data": True}],
    "links": [{"between": ["a", "srv"], "profile": "wifi"}, {"between": ["b", "srv"], "profile": "lte"}],
    "strategy": "fl",
}


def test_run_writes_summary_rounds_and_config(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "digits-star", "--set", "training.rounds=2", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    for k in SUMMARY_KEYS:
        assert k in s, k
    assert 0 <= s["final_accuracy"] <= 1 and s["rounds"] == 2
    for n in s["per_node"].values():
        assert set(n) >= {"flops", "bytes_sent", "bytes_received", "energy_j", "busy_s"}
    for link in s["per_link"].values():
        assert set(link) >= {"bytes", "busy_s", "energy_j"}
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert [int(r["round"]) for r in rows] == [1, 2]
    assert {"accuracy", "loss", "bytes", "energy_j", "sim_time_s", "flops"} <= set(rows[0])
    assert float(rows[-1]["bytes"]) == s["bytes_total"]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["training"]["rounds"] == 2 and cfg["strategy"] == "fl"
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_strategy_and_seed_flags(tmp_path):
    out = tmp_path / "o"
    assert main(["run", "digits-star", "--strategy", "fpl", "--seed", "3", "--set", "training.rounds=1",
                 "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["strategy"] == "fpl" and s["seed"] == 3


@pytest.mark.slow
def test_compare_writes_one_row_per_strategy(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "digits-star", "--strategies", "fl,fpl", "--set", "training.rounds=1",
                 "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["strategy"] for r in rows] == ["fl", "fpl"]
    assert (out / "fl" / "summary.json").exists() and (out / "fpl" / "summary.json").exists()
    assert {"final_accuracy", "bytes_total", "energy_j_total", "params_total"} <= set(rows[0])


def test_scenarios_lists_builtins(capsys):
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out
    assert "digits-star" in out and "edge-fmnist" in out


def _write(tmp_path: Path, data) -> str:
    p = tmp_path / "s.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(p)


def _with(path: str, value):
    data = json.loads(json.dumps(GOOD))
    cur = data
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur[int(k)] if isinstance(cur, list) else cur[k]
    last = keys[-1]
    if value is _DELETE:
        del cur[last]
    elif isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value
    return data


_DELETE = object()

BAD = [
    ("not: [valid", "not valid YAML"),
    ("- just\n- a list\n", "mapping"),
    (_with("training.rounds", -1), "training.rounds"),
    (_with("training.rounds", "many"), "training.rounds"),
    (_with("training.batch_size", 0), "training.batch_size"),
    (_with("training.clients_per_round", 1.5), "training.clients_per_round"),
    (_with("training.optimizer.name", "rmsprop"), "training.optimizer.name"),
    (_with("training.optimizer.lr", -0.1), "training.optimizer.lr"),
    (_with("data.dataset", "imagenet"), "data.dataset"),
    (_with("data.partition.kind", "random"), "data.partition.kind"),
    (_with("data.partition.alpha", 0), "data.partition.alpha"),
    (_with("model", "resnet"), "model"),
    (_with("nodes", _DELETE), "nodes"),
    (_with("nodes.1.profile", "cray"), "nodes[1].profile"),
    (_with("nodes.1.flops_per_s", -5), "flops_per_s"),
    (_with("nodes.2.name", "a"), "duplicate"),
    (_with("links.0.between", ["a", "mars"]), "links[0].between"),
    (_with("links.1.bandwidth_up_bps", 0), "bandwidth_up_bps"),
    (_with("links.1.profile", "carrier-pigeon"), "links[1].profile"),
    (_with("links", [{"between": ["a", "srv"], "profile": "wifi"}]), "cannot reach"),
    (_with("strategy", "gossip"), "strategy"),
    (_with("unknown_field", 3), "unknown_field"),
    (_with("server", "nowhere"), "server"),
    (_with("data.max_train", 1), "partition"),
]


@pytest.mark.parametrize("data,fragment", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_malformed_scenarios_exit_2_with_one_line(tmp_path, capsys, data, fragment):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{\"keep\": true}\n")
    code = main(["run", _write(tmp_path, data), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err
    assert (out / "summary.json").read_text() == "{\"keep\": true}\n"  # nothing already written is lost


@pytest.mark.parametrize("argv,fragment", [
    (["run", "no-such-scenario"], "unknown scenario"),
    (["run", "digits-star", "--set", "training.rounds"], "KEY=VALUE"),
    (["run", "digits-star", "--set", "nodes.99.profile=rpi4"], "index"),
    (["run", "digits-star", "--bogus"], "unrecognized"),
    (["compare", "digits-star", "--strategies", "fl,zz"], "--strategies"),
    (["run", "digits-star", "--set", "plan.cut=7", "--strategy", "sl"], "plan.cut"),
])
def test_bad_command_lines_exit_2(tmp_path, capsys, argv, fragment):
    code = main([*argv, "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err


def test_out_path_that_is_a_file_exits_2(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("precious")
    assert main(["run", "digits-star", "--out", str(f), "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err and f.read_text() == "precious"


@pytest.mark.slow
def test_console_script_exit_code_and_stderr(tmp_path):
    exe = Path(sys.executable).parent / "flexpl"
    r = subprocess.run([str(exe), "run", "digits-star", "--set", "training.rounds=0"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "training.rounds" in r.stderr
