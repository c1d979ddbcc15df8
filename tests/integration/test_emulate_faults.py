"""Faults under ``--backend dist --emulate-links``: bytes that are not a FlexPL message on a data port,
a peer killed mid-round, a link taken down mid-round (both runs then resumed with ``--resume``) and one that
comes back.

Each run is the 4-node chain of ``test_emulate`` (cloud <- edge <- dev0, dev1; ranks 0..3),
small and on fast links, so that a run takes a few seconds. Faults come from the test-only
hooks of :mod:`flexpl.io.injected_faults` (``FLEXPL_DIST_FAULT``) or from the test itself
(``ip link set down`` on a run's veth).
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from flexpl.cli import main
from flexpl.dist.emulate import links as emulate
from flexpl.io.results import write_yaml
from tests.integration.test_emulate import REASON, shaped_chain

pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

# A fault that must be noticed at once is given a timeout far longer than a run (the first run of a
# session also starts the fork server: 15-30 s on a loaded 2-core machine); the run must end before it.
LONG = 120
PROFILE = "flops_per_s: 2.0e9\nactive_power_w: 10.0\nidle_power_w: 2.0\nmemory_bytes: 8.0e9\n"


def _scenario(tmp_path: Path, rounds: int = 3, loss: float = 0.0, half: tuple[int, ...] = ()) -> Path:
    """The small chain; ``loss``: failures.transfer_loss; ``half``: indices of links made half duplex."""
    data = shaped_chain("fl", rounds=rounds, steps=1, width=64, rate=10.0).resolved()  # 100 Mbit/s, tiny model
    if loss:
        data["failures"] = {"transfer_loss": loss}
    for i in half:
        data["links"][i]["duplex"] = "half"
    path = tmp_path / "scn.yaml"
    write_yaml(path, data)
    (tmp_path / "profile.yaml").write_text(PROFILE)
    return path


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str,
         env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """``flexpl run SCENARIO --backend dist --emulate-links``, in this process (its fork server stays warm
    from one test to the next); returns the exit code and the lines on stderr."""
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    code = main(["run", str(tmp_path / "scn.yaml"), "--backend", "dist", "--emulate-links", "--emulate-profile",
                 str(tmp_path / "profile.yaml"), "--out", str(tmp_path / "out"), "--quiet", *args])
    for k in env or {}:
        monkeypatch.delenv(k)
    assert not emulate.list_namespaces(f"flexpl-{os.getpid()}-")  # cleaned up on every way out
    return code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def _rounds(out: Path) -> list[int]:
    return [int(r["round"]) for r in csv.DictReader((out / "rounds.csv").open())]


def _simulated_run(scn: Path, profile: Path) -> Any:
    """The simulator's run of scenario file ``scn`` with every node on ``profile`` (one thread, as every worker)."""
    import torch

    from flexpl.config.scenario import load_scenario
    from flexpl.sim.simulator import run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(emulate.emulated_scenario(load_scenario(str(scn)), profile))
    finally:
        torch.set_num_threads(threads)


def _simulated(scn: Path, profile: Path) -> dict:
    """The simulator's summary of scenario file ``scn`` with every node on ``profile``."""
    return _simulated_run(scn, profile).summary


def _assert_as_simulated(tmp_path: Path, d: dict) -> Any:
    """``d`` (an emulated run's summary) has the simulator's bytes, accuracy and loss (one thread, as every worker);
    returns the simulator's run (an unbroken run's figures, round by round)."""
    res = _simulated_run(tmp_path / "scn.yaml", tmp_path / "profile.yaml")
    s = res.summary
    assert d["measured_bytes_total"] == d["bytes_total"] == s["bytes_total"]
    assert d["final_accuracy"] == s["final_accuracy"] and d["final_loss"] == s["final_loss"]
    for k in ("flops_total", "sim_time_s", "energy_j_total"):
        assert d[k] == s[k], k
    return res


def _no_traceback(out: Path) -> None:
    for log in (out / "workers").glob("rank*.log"):
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.mark.parametrize("mode", ["pickle-frame", "garbage-frame"])
def test_a_frame_that_is_not_a_flexpl_message_stops_the_run_in_one_line(tmp_path, capsys, monkeypatch, mode):
    """The edge (rank 1) writes a pickle or junk instead of its first message of round 2: the receiver
    refuses it in one line naming itself, the edge, the link and the round; nothing is unpickled."""
    _scenario(tmp_path)
    marker = tmp_path / "unpickled"
    t0 = time.monotonic()
    code, err = _run(tmp_path, capsys, monkeypatch, "--timeout", str(LONG),
                     env={"FLEXPL_DIST_FAULT": f"1:2:{mode}", "FLEXPL_DIST_FAULT_MARKER": str(marker)})
    assert code == 3 and len(err) == 1, err
    assert re.fullmatch(r"flexpl: error: node 'dev[01]' \(rank [23]\) failed in round 2: malformed message from "
                        r"node 'edge' \(rank 1\) on link dev[01]-edge: .*", err[0]), err
    assert time.monotonic() - t0 < LONG  # refused at once, not after the timeout
    assert not marker.exists()
    assert _rounds(tmp_path / "out") == [1] and not (tmp_path / "out" / "summary.json").exists()
    _no_traceback(tmp_path / "out")


def test_a_greeting_that_is_not_a_flexpl_peer_stops_the_run_at_setup(tmp_path, capsys, monkeypatch):
    """The edge greets its devices with a pickle instead of its rank: refused during set-up, in one line."""
    _scenario(tmp_path)
    marker = tmp_path / "unpickled"
    t0 = time.monotonic()
    code, err = _run(tmp_path, capsys, monkeypatch, "--timeout", str(LONG),
                     env={"FLEXPL_DIST_FAULT": "1:0:pickle-hello", "FLEXPL_DIST_FAULT_MARKER": str(marker)})
    assert code == 3 and len(err) == 1, err
    assert time.monotonic() - t0 < LONG
    assert re.fullmatch(r"flexpl: error: node 'dev[01]' \(rank [23]\) failed during setup: refused a connection "
                        r"to its data port from 10\.78\.0\.3: .*", err[0]), err
    assert not marker.exists()
    _no_traceback(tmp_path / "out")


def test_the_small_chain_runs_unbroken(tmp_path, capsys, monkeypatch):
    """The run the faults break, without a fault: every accounted byte crossed a shaped link."""
    _scenario(tmp_path, rounds=1)
    code, err = _run(tmp_path, capsys, monkeypatch, "--timeout", "30")
    assert code == 0, err
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["measured_bytes_total"] == s["bytes_total"] > 0


def test_a_peer_killed_mid_round_stops_the_run_in_one_line(tmp_path, capsys, monkeypatch):
    """dev1 (rank 3) dies at its first step of round 2: named with the round, well within the timeout;
    --resume then runs rounds 2-3 and ends with the unbroken run's figures."""
    _scenario(tmp_path)
    t0 = time.monotonic()
    code, err = _run(tmp_path, capsys, monkeypatch, "--timeout", str(LONG), env={"FLEXPL_DIST_FAULT": "3:2:exit"})
    assert code == 3 and err == ["flexpl: error: node 'dev1' (rank 3) stopped responding in round 2 "
                                 "(exited with code 17)"], err
    assert time.monotonic() - t0 < LONG  # a dead peer closes its connections: noticed at once
    assert _rounds(tmp_path / "out") == [1] and not (tmp_path / "out" / "summary.json").exists()
    for r in (0, 1, 2):  # the ranks that lost it say so in one line each, no traceback
        log = (tmp_path / "out" / "workers" / f"rank{r}.log").read_text()
        assert "Traceback" not in log and len([ln for ln in log.splitlines() if ln.startswith("flexpl:")]) <= 1
    code, err = _run(tmp_path, capsys, monkeypatch, "--timeout", "30", "--resume", str(tmp_path / "out"))
    assert code == 0, err
    assert _rounds(tmp_path / "out") == [1, 2, 3]
    _assert_as_simulated(tmp_path, json.loads((tmp_path / "out" / "summary.json").read_text()))


def test_a_link_taken_down_mid_round_stops_the_run_within_the_timeout_naming_it(tmp_path, capsys, monkeypatch):
    """dev1's data veth goes down as it uploads in round 2 and stays down: the run stops after the
    timeout (5 s) with one line naming the link dev1-edge and the round; rounds.csv keeps round 1, the
    checkpoint of round 1 is intact, and --resume runs rounds 2-3 and ends as an unbroken run."""
    _scenario(tmp_path)
    code, err = _run(tmp_path, capsys, monkeypatch, "--timeout", "5", env={"FLEXPL_DIST_FAULT": "3:2:link-down"})
    ended = time.time()
    assert code == 3 and len(err) == 1, err
    assert re.fullmatch(r"flexpl: error: link dev1-edge went down \(the data interface of node 'dev1' is down\): "
                        r"node '\w+' \(rank \d\) stopped responding in round 2 \(timeout 5s\)", err[0]), err
    log = (tmp_path / "out" / "workers" / "rank3.log").read_text()
    down_at = re.search(r"\[flexpl worker (\d\d):(\d\d):(\d\d)\] rank 3 \(dev1\): test hook: data link down", log)
    assert down_at, log
    now = time.localtime(ended)  # the workers' log times are local time, to the second
    since = (now.tm_hour * 3600 + now.tm_min * 60 + now.tm_sec
             - sum(int(v) * m for v, m in zip(down_at.groups(), (3600, 60, 1)))) % 86400
    assert since <= 5 + 10, since  # the timeout, plus the launcher's and a loaded machine's seconds
    out = tmp_path / "out"
    assert _rounds(out) == [1] and not (out / "summary.json").exists()
    _no_traceback(out)
    assert json.loads((out / "checkpoint" / "committed.json").read_text())["round"] == 1
    # resumed without the fault: rounds 2 and 3 run, and every round's figures are the unbroken run's
    code, err = _run(tmp_path, capsys, monkeypatch, "--timeout", "30", "--resume", str(out))
    assert code == 0, err
    assert _rounds(out) == [1, 2, 3]
    sim = _assert_as_simulated(tmp_path, json.loads((out / "summary.json").read_text()))
    for row, want in zip(csv.DictReader((out / "rounds.csv").open()), sim.rounds, strict=True):
        for k in ("accuracy", "loss", "bytes", "flops", "sim_time_s", "energy_j"):
            assert float(row[k]) == want[k], (row["round"], k)
    # links_measured.csv: the rounds this launch ran, under their own numbers
    assert {int(r["round"]) for r in csv.DictReader((out / "links_measured.csv").open())} == {2, 3}


def test_a_link_that_comes_back_after_a_pause_is_ridden_through(tmp_path, capsys, monkeypatch):
    """dev1's data veth is down for 1.5 s in round 2: TCP resends what was lost, the run finishes with the
    simulator's accuracy and bytes, and round 2 took the pause longer."""
    _scenario(tmp_path)
    code, err = _run(tmp_path, capsys, monkeypatch, "--timeout", "30", env={"FLEXPL_DIST_FAULT": "3:2:link-flap"})
    assert code == 0, err
    out = tmp_path / "out"
    assert "test hook: data link down for 1.5 s" in (out / "workers" / "rank3.log").read_text()
    d = json.loads((out / "summary.json").read_text())
    _assert_as_simulated(tmp_path, d)
    walls = [float(r["wall_s"]) for r in csv.DictReader((out / "rounds.csv").open())]
    assert walls[1] >= 1.5, walls  # the pause fell in round 2, and the run waited it out


def test_lost_transfers_are_resent_on_the_emulated_links(tmp_path, capsys, monkeypatch):
    """failures.transfer_loss=0.3: each lost try is resent over the shaped link (the receiver drops it),
    so every link direction carries the billed bytes, resends included, as one hop per trace hop,
    and the run ends with the simulator's bytes, accuracy and loss."""
    _scenario(tmp_path, rounds=2, loss=0.3)
    code, err = _run(tmp_path, capsys, monkeypatch, "--timeout", "30")
    assert code == 0, err
    out = tmp_path / "out"
    d = json.loads((out / "summary.json").read_text())
    _assert_as_simulated(tmp_path, d)
    for link, v in d["per_link"].items():
        assert v["measured_bytes"] == v["bytes"], link
    lossless = shaped_chain("fl", rounds=2, steps=1, width=64, rate=10.0)
    path = tmp_path / "lossless.yaml"
    write_yaml(path, lossless.resolved())
    assert d["bytes_total"] > _simulated(path, tmp_path / "profile.yaml")["bytes_total"]
    links = list(csv.DictReader((out / "links_measured.csv").open()))
    for r in links:  # resends are part of their hop: as many messages as the clock's hops, all their bytes
        assert int(r["measured_bytes"]) == int(r["bytes"]) and int(r["measured_messages"]) == int(r["messages"]), r
    # the resends took the link's time again: measured seconds follow the predicted ones, resends included
    pred = sum(float(r["predicted_s"]) for r in links)
    meas = sum(float(r["measured_s"]) for r in links)
    assert 0.5 * pred <= meas <= 3.0 * pred, (pred, meas)


def test_a_run_over_half_duplex_links_is_the_simulators(tmp_path, capsys, monkeypatch):
    """Every link half duplex (both directions take turns on one medium): the run finishes with the
    simulator's bytes, accuracy and loss, every link direction carrying its billed bytes, and no lock or
    FIFO of the medium is left behind."""
    import tempfile

    _scenario(tmp_path, rounds=2, half=(0, 1, 2))
    before = set(Path(tempfile.gettempdir()).glob("flexpl-medium-*"))
    code, err = _run(tmp_path, capsys, monkeypatch, "--timeout", "30")
    assert code == 0 and err == [], err  # no warning about half duplex any more
    out = tmp_path / "out"
    d = json.loads((out / "summary.json").read_text())
    _assert_as_simulated(tmp_path, d)
    for r in csv.DictReader((out / "links_measured.csv").open()):
        assert int(r["measured_bytes"]) == int(r["bytes"]) and int(r["measured_messages"]) == int(r["messages"]), r
    assert set(Path(tempfile.gettempdir()).glob("flexpl-medium-*")) <= before
    _no_traceback(out)


# A process outside the run: connects to a data port, sends a pickle (whose unpickling would create the
# marker file) on one connection and junk on another, each time waiting until the worker hangs up. With
# a status file, it waits first until that worker is in round 2 or later (mid-run).
_STRANGER = r"""
import json, pickle, socket, sys, time
class Touch:
    def __init__(self, path):
        self.path = path
    def __reduce__(self):
        return (open, (self.path, "w"))
host, port, marker, status = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
frames = [pickle.dumps(Touch(marker)), bytes(range(256)) * 4]
deadline = time.monotonic() + 60
while status != "-":
    try:
        if json.load(open(status))["round"] >= 2:
            break
    except (OSError, ValueError):
        pass
    if time.monotonic() > deadline:
        sys.exit("the worker never reached round 2")
    time.sleep(0.01)
while frames:
    try:
        s = socket.create_connection((host, port), timeout=5)
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("the data port never answered")
        time.sleep(0.05)
        continue
    s.sendall(frames.pop(0))
    try:
        s.recv(1)  # b"" once the worker has closed it
    except OSError:
        pass
    s.close()
print("hung up on twice")
"""


def test_a_stranger_on_a_data_port_is_refused_and_the_run_carries_on(tmp_path, capsys, monkeypatch):
    """A process in dev0's namespace (not the edge's peer) connects to the edge's data port, with a
    pickle and with junk, twice during set-up and twice mid-run (round 2 or later): the edge hangs up on
    it without unpickling anything, says so in one line of its log each time, and the run finishes as the
    simulator's."""
    import subprocess
    import sys
    import threading

    from flexpl.dist.emulate.comm import DATA_PORT, data_ip

    _scenario(tmp_path, rounds=30)  # ~0.1-0.2 s a round: the mid-run stranger has seconds to come in
    marker = tmp_path / "unpickled"
    ns = Path(f"/var/run/netns/flexpl-{os.getpid()}-2")  # dev0's namespace, once the run has made it
    status = tmp_path / "out" / "workers" / "rank1.json"
    done: list[subprocess.CompletedProcess] = []

    def stranger(when: str) -> None:
        deadline = time.monotonic() + 60
        while not ns.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        done.append(subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", _STRANGER, data_ip(1),
                                    str(DATA_PORT), str(marker), when], capture_output=True, text=True, timeout=90))

    threads = [threading.Thread(target=stranger, args=(when,)) for when in ("-", str(status))]
    for t in threads:
        t.start()
    try:
        code, err = _run(tmp_path, capsys, monkeypatch, "--timeout", "30")
    finally:
        for t in threads:
            t.join(timeout=90)
    assert len(done) == 2 and all(p.returncode == 0 and "hung up on twice" in p.stdout for p in done), done
    assert code == 0 and err == [], err
    assert not marker.exists()
    out = tmp_path / "out"
    log = (out / "workers" / "rank1.log").read_text().splitlines()
    refused = [i for i, ln in enumerate(log) if "refused" in ln]
    assert len(refused) == 4, log
    for i in refused:
        assert re.search(r"rank 1 \(edge\): refused a connection to its data port from 10\.78\.0\.4: not a FlexPL "
                         r"greeting \(it starts [0-9a-f ]+\); nothing it sent was unpickled; the run carries on$",
                         log[i]), log[i]
    connected = next(i for i, ln in enumerate(log) if "set up and connected" in ln)
    assert sum(i > connected for i in refused) >= 2, log  # two came mid-run
    assert _rounds(out) == list(range(1, 31))
    _assert_as_simulated(tmp_path, json.loads((out / "summary.json").read_text()))
    _no_traceback(out)
