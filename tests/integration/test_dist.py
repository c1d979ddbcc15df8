"""The distributed backend: the simulator's program over real processes, on loopback.

Every run here starts one process per node (gloo over 127.0.0.1). The reference is the
simulator with one thread, like each worker (the simulator's arithmetic depends on the
thread count), on the same scenario and seed: measured bytes must equal the accounted
ones to the byte on every link, and the accuracy must match bitwise.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from flexpl.cli import main
from flexpl.dist.launch import blame, launch
from flexpl.dist.ranks import node_ranks
from flexpl.errors import UserError
from flexpl.io.results import write_yaml
from flexpl.sim.simulator import run
from tests.conftest import chain_scenario, digits_star

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

SMALL = ["training.rounds=2", "training.max_steps_per_round=3"]


def _sim(scn) -> dict:
    """The simulator's summary, computed with one thread like each worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(scn).summary
    finally:
        torch.set_num_threads(threads)


def _assert_same_as_simulator(d: dict, s: dict) -> None:
    assert d["backend"] == "dist"
    assert d["measured_bytes_total"] == d["bytes_total"] == s["bytes_total"] > 0
    assert d["per_link"].keys() == s["per_link"].keys()
    for link, v in d["per_link"].items():
        assert v["measured_bytes"] == v["bytes"] == s["per_link"][link]["bytes"], link
    for k in ("flops_total", "sim_time_s", "energy_j_total", "params_total"):
        assert d[k] == s[k], k
    # bitwise: the test loss is a sum over every test sample, so any weight bit would show
    for k in ("final_accuracy", "final_loss", "accuracy_min", "accuracy_ensemble"):
        assert d[k] == s[k], k


@pytest.mark.parametrize("strategy", ["fl", "sfl", "fpl", "mp"])
def test_dist_moves_exactly_the_accounted_bytes_and_matches_the_simulator(strategy, tmp_path):
    scn = digits_star(SMALL, strategy=strategy)
    d = launch(scn, tmp_path / "out", timeout_s=60)
    _assert_same_as_simulator(d, _sim(scn))
    rows = list(csv.DictReader((tmp_path / "out" / "rounds.csv").open()))
    assert [int(r["round"]) for r in rows] == [1, 2]
    assert all(float(r["wall_s"]) > 0 for r in rows) and d["wall_s_per_round"] > 0
    assert (tmp_path / "out" / "timeline.csv").exists()
    assert not list((tmp_path / "out" / "workers").glob("*.json"))  # status files are cleaned up


@pytest.mark.parametrize("strategy", ["fl", "sl"])
def test_multi_hop_routes_are_forwarded_by_the_intermediate_node(strategy, tmp_path):
    """devices -> edge -> cloud: the edge process receives and forwards, so each link carries its share."""
    scn = chain_scenario(SMALL, strategy=strategy)
    d = launch(scn, tmp_path / "out", timeout_s=60)
    s = _sim(scn)
    _assert_same_as_simulator(d, s)
    assert d["per_link"]["edge-cloud"]["measured_bytes"] > 0


def test_train_loss_gathers_every_ranks_share(tmp_path):
    scn = digits_star(SMALL + ["engine.executor=sequential"], strategy="fl")
    launch(scn, tmp_path / "out", timeout_s=60)
    sim_rows = run(scn).rounds
    rows = list(csv.DictReader((tmp_path / "out" / "rounds.csv").open()))
    for r, sr in zip(rows, sim_rows):
        # summed in another order (rank by rank), so equal to rounding only: the weights are bitwise
        # the simulator's (same kernels in each process), only the float64 sum of the losses differs
        assert float(r["train_loss"]) == pytest.approx(sr["train_loss"], rel=1e-9)


def _stalled_run(tmp_path, monkeypatch, capsys, mode: str, flags: list[str]) -> tuple[int, str, float]:
    scn = digits_star(["training.rounds=3", "training.max_steps_per_round=2"], strategy="fl")
    path = tmp_path / "scn.yaml"
    write_yaml(path, scn.resolved())
    monkeypatch.setenv("FLEXPL_DIST_FAULT", f"3:2:{mode}")  # rank 3 (dev2) stalls in round 2
    t0 = time.monotonic()
    code = main(["run", str(path), *flags, "--out", str(tmp_path / "out"), "--quiet"])
    return code, capsys.readouterr().err, time.monotonic() - t0


def _assert_clean_failure(tmp_path, code: int, err: str) -> None:
    assert code == 3
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("flexpl: error: node 'dev2' (rank 3) stopped responding "
                                                   "in round 2"), err
    out = tmp_path / "out"
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert [int(r["round"]) for r in rows] == [1]  # the completed round survives
    assert not (out / "summary.json").exists()
    for f in (out / "workers").glob("rank*.json"):  # no worker is left behind
        pid = json.loads(f.read_text())["pid"]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_that_dies_mid_round_stops_the_run_with_one_line(tmp_path, monkeypatch, capsys):
    code, err, elapsed = _stalled_run(tmp_path, monkeypatch, capsys, "exit", ["--backend", "dist", "--timeout", "20"])
    _assert_clean_failure(tmp_path, code, err)
    assert "exited with code 17" in err
    assert elapsed < 20  # a dead peer is noticed at once, well within the timeout


@pytest.mark.slow
def test_a_worker_that_hangs_is_named_after_the_timeout(tmp_path, monkeypatch, capsys):
    code, err, elapsed = _stalled_run(tmp_path, monkeypatch, capsys, "hang",
                                      ["--set", "engine.backend=dist", "--set", "engine.timeout_s=3"])
    _assert_clean_failure(tmp_path, code, err)
    assert "(timeout 3s)" in err
    assert elapsed < 20


@pytest.mark.slow
def test_a_slow_evaluation_on_rank_0_is_not_a_hang(tmp_path, monkeypatch):
    """Rank 0 evaluates for 3 timeouts; its keepalives keep the others waiting."""
    monkeypatch.setenv("FLEXPL_DIST_FAULT", "0:1:slow-eval")
    scn = digits_star(["training.rounds=1", "training.max_steps_per_round=2"], strategy="fl")
    d = launch(scn, tmp_path / "out", timeout_s=1.5)
    assert d["rounds"] == 1 and d["measured_bytes_total"] == d["bytes_total"]


def test_blame_follows_waiting_ranks_to_the_one_that_hangs():
    """dev0 timed out waiting for the server, which waits for dev2, which waits for nobody."""
    node_of = {0: "server", 1: "dev0", 2: "dev1", 3: "dev2"}
    statuses = [{"round": 2, "blocked": ["recv", 3, 0.0]},
                {"round": 3, "state": "failed", "kind": "peer", "peer": 0},
                {"round": 3, "blocked": ["recv", 0, 0.0]},
                {"round": 2, "blocked": None}]
    line = blame([None, 3, None, None], statuses, node_of, [1], 5.0)
    assert line == "node 'dev2' (rank 3) stopped responding in round 2 (timeout 5s)"
    # a rank that exited without reporting a lost peer is the culprit, whatever the others say
    statuses[3] = {"round": 2}
    assert blame([None, 3, None, -9], statuses, node_of, [1, 3], 5.0) == \
        "node 'dev2' (rank 3) stopped responding in round 2 (killed by signal 9)"


def test_node_ranks_default_to_list_position_and_follow_rank_fields():
    scn = digits_star()
    assert node_ranks(scn) == {"server": 0, "dev0": 1, "dev1": 2, "dev2": 3, "dev3": 4}
    scn = digits_star(["nodes.0.rank=4", "nodes.4.rank=0"])
    assert node_ranks(scn)["server"] == 4 and node_ranks(scn)["dev3"] == 0
    with pytest.raises(UserError, match="nodes.1..rank: rank 1 is taken by node 'server'"):
        node_ranks(digits_star(["nodes.0.rank=1"]))
    with pytest.raises(UserError, match="out of range"):
        node_ranks(digits_star(["nodes.0.rank=7"]))


def test_a_worker_that_raises_stops_the_run_with_one_line_naming_it(tmp_path, monkeypatch, capsys):
    """dev2 raises in round 2: the launcher prints one line naming it, the round and the error, exit 3;
    the ranks that lose a peer end with (at most) one error line naming it in their logs, no traceback."""
    code, err, elapsed = _stalled_run(tmp_path, monkeypatch, capsys, "raise", ["--backend", "dist", "--timeout", "20"])
    assert code == 3
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["flexpl: error: node 'dev2' (rank 3) failed in round 2: injected fault (FLEXPL_DIST_FAULT)"], err
    assert elapsed < 20
    workers = tmp_path / "out" / "workers"
    assert "RuntimeError: injected fault" in (workers / "rank3.log").read_text()  # its own log has the details
    reported = 0
    for r in (0, 1, 2, 4):
        log = (workers / f"rank{r}.log").read_text()
        assert "Traceback" not in log, log
        errors = [ln for ln in log.splitlines() if ln.startswith("flexpl: error:")]
        # a peer names the rank it lost (dev2, or one that stopped because of dev2): one line, exit 3
        assert len(errors) <= 1 and all(re.fullmatch(r"flexpl: error: node '\w+' \(rank \d\) stopped responding "
                                                      r"in round 2 \(.*\)", e) for e in errors), log
        reported += len(errors)
    assert reported >= 1, "no peer reported the failed node"
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun is not installed beside this Python")
def test_flexpl_worker_under_torchrun(tmp_path):
    """What a multi-machine run does on each machine, here with every rank on this one."""
    scn = digits_star(SMALL, strategy="fpl")
    path = tmp_path / "scn.yaml"
    write_yaml(path, scn.resolved())
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--nnodes=1", "--nproc-per-node=5", "--rdzv-backend=c10d",
                           "--rdzv-endpoint=127.0.0.1:0", "-m", "flexpl.cli", "worker", str(path),
                           "--out", str(tmp_path / "out"), "--timeout", "60"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    d = json.loads((tmp_path / "out" / "summary.json").read_text())
    _assert_same_as_simulator(d, _sim(scn))


def test_lost_transfers_are_resent_as_often_as_billed(tmp_path):
    """failures.transfer_loss=0.3 on a multi-hop chain: every rank draws the same tries per hop and the
    sender resends each lost try, so the bytes that cross each link equal the billed ones, resends
    included (more than without loss), and the run matches the simulator bitwise."""
    scn = chain_scenario(SMALL + ["failures.transfer_loss=0.3"], strategy="fl")
    d = launch(scn, tmp_path / "out", timeout_s=60)
    _assert_same_as_simulator(d, _sim(scn))
    lossless = _sim(chain_scenario(SMALL, strategy="fl"))
    assert d["measured_bytes_total"] > lossless["bytes_total"]
    assert any(v["measured_bytes"] > lossless["per_link"][k]["bytes"] for k, v in d["per_link"].items())


def test_every_failure_kind_at_once_matches_the_simulator(tmp_path):
    """Dropouts, link outages, a host failure (the round redone) and lost transfers, drawn alike on every
    rank: the run matches the simulator bitwise, with every billed byte (resends included) on the wire."""
    scn = chain_scenario(["training.rounds=3", "training.max_steps_per_round=2", "failures.dropout=0.3",
                          "failures.link_outage=0.2", "failures.host_failure=0.3", "failures.transfer_loss=0.2"],
                         strategy="fl")
    d = launch(scn, tmp_path / "out", timeout_s=60)
    _assert_same_as_simulator(d, _sim(scn))
    assert d["wasted_bytes"] > 0
