"""``engine.executor: ray`` (one run's clients on Ray actors) against ``sequential``, on a local 2-node Ray.

The fixture starts a Ray cluster of two nodes on this machine (``ray start --head`` and a
second ``ray start --address`` with its own resources, one CPU each, on free ports and a temp
dir of their own) and tears both down after the module by their process groups (never
``ray stop``, which would stop every Ray on the machine). Without Ray the tests marked ``ray``
are skipped, unless ``FLEXPL_REQUIRE_RAY=1`` (``make test``), where a missing Ray fails them.
The bad-input tests at the end need no cluster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import flexpl
from flexpl import cli
from flexpl.errors import UserError
from flexpl.sim.exec.ray_pool import deal, peak_rss_bytes
from flexpl.sim.simulator import run, setup
from tests.conftest import digits_edges, digits_star, flexpl_err

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY and not os.environ.get("FLEXPL_REQUIRE_RAY"),
                               reason="Ray not installed (pip install 'flexpl[ray]'; make test-ray)")
# [Note: mode equivalence] the partial sums are added per actor, not client by client: round-off
RTOL = 1e-5
# what may differ between two runs of one scenario on two executors
VOLATILE = {"wall_s", "executor", "scenario_sha256", "final_loss"}
START_TIMEOUT_S = 120


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """``ray start ... --block`` in a process group of its own (so that teardown stops exactly it)."""
    exe = str(Path(sys.executable).parent / "ray")
    return subprocess.Popen([exe, "start", "--block", "--disable-usage-stats", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a ``ray start --block`` and everything in its process group (raylet, GCS, workers)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what the group still holds (workers of a killed raylet)
    except ProcessLookupError:
        pass


def _kill_under(temp_dir: str) -> None:
    """SIGKILL this user's processes whose command line names ``temp_dir`` (Ray's own, outside the groups)."""
    me = os.getuid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{d}").st_uid != me:
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if temp_dir.encode() in f.read():
                    os.kill(int(d), signal.SIGKILL)
        except OSError:
            pass


def _wait_nodes(ray: Any, n: int, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while sum(1 for x in ray.nodes() if x.get("Alive")) < n:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"the local Ray cluster did not reach {n} nodes: "
                               + " / ".join(p.stderr.read()[-1000:] for p in procs if p.poll() is not None))
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A 2-node Ray on this machine (1 CPU each); this process is connected to it. Yields its address."""
    if not HAVE_RAY:
        pytest.fail("Ray not installed, and FLEXPL_REQUIRE_RAY is set")
    import ray

    assert not ray.is_initialized()
    temp = tempfile.mkdtemp(prefix="flexpl-ray-", dir="/tmp")  # (short: Ray's socket paths are limited)
    # a loopback-only test cluster: no token (Ray 2.60 turns token auth on where ~/.ray/auth_token exists,
    # and a driver or node that does not find the same token is refused)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               PYTHONPATH=os.pathsep.join([str(Path(flexpl.__file__).parents[1]),
                                           *filter(None, [os.environ.get("PYTHONPATH")])]))
    port, client, agent, agent2, dash, dash2, metrics, metrics2, rt, rt2 = _free_ports(10)
    common = ["--num-cpus", "1", "--num-gpus", "0", "--node-ip-address", "127.0.0.1",
              "--object-store-memory", str(80 * 2**20)]
    procs = []
    old_mode = os.environ.get("RAY_AUTH_MODE")
    try:
        procs.append(_ray_start(["--head", "--port", str(port), "--ray-client-server-port", str(client),
                                 "--temp-dir", temp, "--dashboard-agent-listen-port", str(agent),
                                 "--dashboard-agent-grpc-port", str(dash), "--metrics-export-port", str(metrics),
                                 "--runtime-env-agent-port", str(rt), "--resources", '{"head": 1}',
                                 "--include-dashboard", "false", *common], env))
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # the head's GCS accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if procs[0].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start --head failed: {procs[0].stderr.read()[-2000:]}") from None
                time.sleep(0.2)
        procs.append(_ray_start(["--address", address, "--dashboard-agent-listen-port", str(agent2),
                                 "--dashboard-agent-grpc-port", str(dash2), "--metrics-export-port", str(metrics2),
                                 "--runtime-env-agent-port", str(rt2), "--resources", '{"second": 1}', *common],
                                env))
        os.environ["RAY_AUTH_MODE"] = "disabled"
        # log_to_driver=False: the cluster's own log lines ("(pid=gcs_server) ... metrics agent") would be
        # printed to this process's stderr by a background thread at any time, into whichever test's
        # capsys is then reading (CI saw one land inside a one-line-error test)
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        _wait_nodes(ray, 2, procs)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for p in reversed(procs):
            _stop(p)
        _kill_under(temp)
        shutil.rmtree(temp, ignore_errors=True)
        if old_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old_mode


def _run(strategy: str, mode: str, extra: list[str] | None = None, scenario: Any = digits_star,
         ) -> tuple[dict, dict, list[dict], Any]:
    """A run's summary, its weights (every aggregated model, and every replica as ``(stage, replica)``),
    rows and traces."""
    scn = scenario([f"strategy={strategy}", f"engine.executor={mode}", "training.rounds=2"] + (extra or []))
    st = setup(scn)
    res = run(scn, st=st, keep_traces=True)
    weights: dict[Any, dict[str, torch.Tensor]] = {s: m.state_dict() for s, m in st.engine.global_.items()}
    if scenario is digits_edges:  # [Note: Ray groups] the fronts too, fetched from the actors that train them
        weights.update({(s, r): rep.module.state_dict() for s, reps in enumerate(st.engine.replicas)
                        for r, rep in enumerate(reps)})
    return res.summary, weights, res.rounds, res.traces


@pytest.mark.slow
@pytest.mark.ray
@needs_ray
@pytest.mark.parametrize("strategy,scenario,extra", [
    ("fl", digits_star, []),
    ("sfl", digits_star, []),
    # FPL with one trunk per edge: each edge's group on one actor, its fronts kept there [Note: Ray groups]
    ("fpl", digits_edges, ["training.rounds=3", "training.optimizer.name=adam", "training.optimizer.lr=0.01"]),
    # per-device cuts: the weak devices' second front block computed (and kept) at their edge
    ("fpl-devcut", digits_edges, ["plan.cut=2"]),
])
def test_ray_executor_on_two_nodes_equals_sequential(cluster: str, strategy: str, scenario: Any,
                                                     extra: list[str]) -> None:
    """Two actors, one per node: the whole trace (and so FLOPs, bytes, clock, energy) is the sequential
    one; the weights, losses and accuracy agree to float round-off."""
    import ray

    ref_sum, ref_w, ref_rows, ref_tr = _run(strategy, "sequential", extra, scenario)
    got_sum, got_w, got_rows, got_tr = _run(strategy, "ray", extra, scenario)
    assert got_sum["executor"] == "ray" and ray.is_initialized()  # (a Ray the caller started is left running)
    assert {k: v for k, v in got_sum.items() if k not in VOLATILE} == \
        {k: v for k, v in ref_sum.items() if k not in VOLATILE}
    for (ta, sa, ea), (tb, sb, eb) in zip(got_tr, ref_tr, strict=True):
        assert sa == sb and ea == eb
        assert ta.__dict__.keys() == tb.__dict__.keys()
        for k in ta.__dict__:
            assert getattr(ta, k) == getattr(tb, k), k
    for s, ref in ref_w.items():
        for k, t in ref.items():
            torch.testing.assert_close(got_w[s][k], t, rtol=RTOL, atol=1e-6)
    assert [r["train_loss"] for r in got_rows] == pytest.approx([r["train_loss"] for r in ref_rows], rel=RTOL)
    assert [r["accuracy"] for r in got_rows] == pytest.approx([r["accuracy"] for r in ref_rows], abs=0.01)


@pytest.mark.slow
@pytest.mark.ray
@needs_ray
def test_run_with_ray_address_writes_the_sequential_bill(cluster: str, tmp_path: Path) -> None:
    """``flexpl run --ray ADDRESS``: the summary's cost figures are the sequential run's, to the last digit."""
    base = ["run", "digits-star", "--set", "training.rounds=1", "--quiet"]
    assert cli.main([*base, "--out", str(tmp_path / "seq")]) == 0
    assert cli.main([*base, "--ray", cluster, "--out", str(tmp_path / "ray")]) == 0
    seq = json.loads((tmp_path / "seq" / "summary.json").read_text())
    got = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert got["executor"] == "ray"
    for k in ("flops_total", "bytes_total", "sim_time_s", "energy_j_total", "energy_j_compute", "energy_j_comm"):
        assert got[k] == seq[k], k


@pytest.mark.ray
@needs_ray
def test_more_actors_than_the_cluster_holds_is_a_user_error(cluster: str) -> None:
    scn = digits_star(["engine.executor=ray", "engine.workers=3", "training.rounds=1"])
    with pytest.raises(UserError, match=r"3 Ray actors do not fit the cluster \(2 CPUs"):
        run(scn)


# ------------------------------------------------------------------ no cluster needed


def test_deal_longest_first_to_the_least_loaded() -> None:
    work = {"a": 10.0, "b": 1.0, "c": 9.0, "d": 2.0, "e": 8.0}
    # a (10) and c (9) open the two workers; e (8) joins c (9 < 10), then d and b join a (10, then 12)
    assert deal(work, 2) == [["a", "b", "d"], ["c", "e"]]  # loads 13 and 17; each share in work's order
    assert deal(work, 1) == [list(work)]
    assert deal({"x": 5.0}, 3) == [["x"], [], []]
    # 1,000 clients of uneven work on 7 workers: the largest load within 4/3 of the mean (LPT's bound)
    many = {f"n{i}": float((i * 7919) % 97 + 1) for i in range(1000)}
    shares = deal(many, 7)
    loads = [sum(many[n] for n in sh) for sh in shares]
    assert sorted(n for sh in shares for n in sh) == sorted(many)
    assert max(loads) <= sum(loads) / 7 * 4 / 3
    assert all(sh == [n for n in many if n in set(sh)] for sh in shares)  # each share in the round's order
    with pytest.raises(ValueError):
        deal(work, 0)


def test_ray_missing_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as where it is not installed
    assert cli.main(["run", "digits-star", "--ray", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = flexpl_err(capsys)
    assert len(err.splitlines()) == 1 and "flexpl[ray]" in err
    assert not (tmp_path / "o").exists()  # said before any work
    # the scenario's engine.executor=ray alone: the same line when the run would start the actors
    assert cli.main(["run", "digits-star", "--set", "engine.executor=ray", "--set", "training.rounds=1",
                     "--out", str(tmp_path / "p"), "--quiet"]) == 2
    err = flexpl_err(capsys)
    assert len(err.splitlines()) == 1 and "flexpl[ray]" in err


@pytest.mark.ray
@needs_ray
def test_unreachable_address_is_one_line(tmp_path: Path, capsys) -> None:
    (port,) = _free_ports(1)  # a port nothing listens on
    assert cli.main(["run", "digits-star", "--ray", f"127.0.0.1:{port}", "--out", str(tmp_path / "o"),
                     "--quiet"]) == 2
    err = flexpl_err(capsys)
    assert len(err.splitlines()) == 1 and f"--ray 127.0.0.1:{port}: cannot reach" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,fragment", [
    (["run", "digits-star", "--ray", "not an address"], "is not a Ray address"),
    (["run", "digits-star", "--set", "engine.ray_address=nowhere"], "engine.ray_address: 'nowhere' is not a Ray"),
    (["run", "digits-star", "--set", "engine.gpus_per_worker=-1"], "engine.gpus_per_worker"),
    # a plan the ray executor does not run yet: named, with the executors that do
    (["run", "digits-star", "--strategy", "fpl", "--set", "engine.executor=ray"],
     "engine.executor=ray: the fpl plan (strategy fpl) is not supported yet"),
    (["run", "digits-star", "--set", "engine.executor=ray", "--set", "failures.dropout=0.2"],
     "use engine.executor=sequential, processes or vectorized"),
])
def test_bad_ray_executor_input_is_one_line(argv: list[str], fragment: str, tmp_path: Path, capsys) -> None:
    assert cli.main([*argv, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = flexpl_err(capsys)
    assert len(err.splitlines()) == 1 and fragment in err, err


def test_peak_rss_is_read() -> None:
    assert peak_rss_bytes() > 10 * 2**20  # (this process holds torch)
