"""``flexpl run --backend dist --emulate-links``: the virtual clock against real, kernel-shaped links.

Every worker of the distributed backend runs in its own network namespace
(``flexpl-<launcher pid>-<rank>``). A hub namespace (``flexpl-<pid>-hub``) holds two
bridges; each worker namespace has two veth interfaces into them:

- ``eth0`` (10.77.0.0/24, control): gloo's store and bookkeeping traffic, not shaped;
- ``eth1`` (10.78.0.0/24, data): the training hops (``emulate_comm.EmuComm``), shaped on
  egress by HTB: one class per neighbour, at the bandwidth of the link in that
  direction (``bandwidth_up_bps`` from the link's first endpoint to its second,
  ``bandwidth_down_bps`` back), selected by a u32 filter on the neighbour's address.
  Each direction has its own class; the two directions of a half-duplex link (``duplex:
  half``) also take turns on one medium, by a lock the two senders share
  (``comm.py`` [Note: half duplex]), so that both queue as on the clock's one resource.

This kernel has ``htb`` and ``tbf`` but no ``netem``, so a link's latency is added by the
transport: the sender waits ``latency_s`` before it writes each message.

Every node's device profile is replaced by one measured on this machine with ``flexpl
calibrate`` (one thread, as each worker runs), so predicted compute times refer to the
hardware that runs them: ``--emulate-profile FILE`` gives one, else it is measured once
and cached (``$XDG_CACHE_HOME/flexpl/calibrated-1thread.yaml``).

After the run, ``emulation.csv`` (per round: the virtual clock's ``sim_time_s`` for the
round beside the measured ``wall_s``) and ``links_measured.csv`` (per round and link
direction: predicted and measured transfer seconds) are written to the run folder, and
both are printed. Predictions are read from the run itself (rounds.csv and the rounds'
traces), never computed here.

Faults: a worker that fails is named by the launcher as without emulation; when a run stops
and a data veth is down (a pulled cable: ``ip link set down``, or the ``link-down`` test hook
of :mod:`flexpl.io.injected_faults`), the line names the link(s) of that node first. A link
that comes back within ``engine.timeout_s`` is ridden through (TCP resends what was lost).

Clean-up: the launcher deletes its namespaces (which removes the veths and bridges inside
them) on every way out; a watchdog process started with the namespaces waits on a pipe
that only the launcher holds and, when it closes (the launcher exited or was killed with
SIGKILL), kills whatever still runs in them and deletes them. Each launch also deletes
``flexpl-<pid>-*`` namespaces whose launcher ``pid`` is gone.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexpl.errors import UserError

if TYPE_CHECKING:
    from flexpl.config.scenario import Scenario

NS_PREFIX = "flexpl-"
NETNS_ENV = "FLEXPL_NETNS"      # the worker enters this namespace first thing
EMULATE_ENV = "FLEXPL_EMULATE"  # the worker carries training hops over EmuComm
# The clock's bandwidth counts payload bytes; HTB counts whole frames. A full TCP segment
# carries 1448 payload bytes (MSS of a 1500-byte MTU with TCP timestamps: 1500 - 20 IP -
# 32 TCP) in a 1514-byte frame (+ 14 Ethernet), so classes get the payload rate x 1514/1448.
WIRE_OVERHEAD = 1514 / 1448
_WATCHDOG = ("import sys\nsys.stdin.buffer.read()\n"  # EOF: the launcher is gone
             "from flexpl.dist.emulate.links import cleanup\ncleanup(sys.argv[1])\n")


# ---------------------------------------------------------------- host checks


def check_host() -> None:
    """Raise a one-line ``UserError`` unless this is Linux, we are root and ``ip``/``tc`` exist."""
    why = None
    if sys.platform != "linux":
        why = f"needs Linux (network namespaces), this is {sys.platform}"
    elif os.geteuid() != 0:
        why = "needs root (it creates network namespaces and traffic classes); run it as root"
    else:
        missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
        if missing:
            why = f"needs iproute2's {' and '.join(missing)}; install iproute2 (e.g. apt-get install iproute2)"
    if why:
        raise UserError(f"--emulate-links: {why}")


def _ip(*args: str, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(list(args), input=stdin, capture_output=True, text=True)
    if check and proc.returncode != 0:
        err = " ".join(proc.stderr.split())
        raise UserError(f"--emulate-links: setting up the emulated network failed: `{' '.join(args[:4])}`: {err}")
    return proc.stdout


def list_namespaces(prefix: str = NS_PREFIX) -> list[str]:
    """Names of network namespaces starting with ``prefix``."""
    out = _ip("ip", "netns", "list", check=False)
    return [ln.split()[0] for ln in out.splitlines() if ln.split() and ln.split()[0].startswith(prefix)]


def cleanup(prefix: str) -> None:
    """Kill what runs in the namespaces named ``prefix-*`` (by pid) and delete them."""
    for ns in list_namespaces(prefix + "-"):
        for pid in _ip("ip", "netns", "pids", ns, check=False).split():
            if pid.isdigit() and int(pid) != os.getpid():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
        _ip("ip", "netns", "del", ns, check=False)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def cleanup_stale() -> None:
    """Delete ``flexpl-<pid>-*`` namespaces whose launcher ``pid`` no longer runs."""
    for pid in sorted({int(m.group(1)) for ns in list_namespaces()
                       if (m := re.match(r"flexpl-(\d+)-", ns))}):
        if not _alive(pid):
            cleanup(f"{NS_PREFIX}{pid}")


# ---------------------------------------------------------------- the namespaces




class ShapedNetwork:
    """The namespaces, bridges, veths and HTB classes of one emulated run."""

    def __init__(self, scn: Scenario, ranks: dict[str, int]) -> None:
        self.prefix = f"{NS_PREFIX}{os.getpid()}"
        self.ranks = ranks
        self.world = len(ranks)
        if self.world > 250:
            raise UserError(f"--emulate-links: at most 250 nodes, the scenario has {self.world}")
        self.scn = scn
        self.watchdog: subprocess.Popen | None = None
        self._pipe_w: int | None = None

    def ns(self, rank: int) -> str:
        """Namespace of ``rank``."""
        return f"{self.prefix}-{rank}"

    @property
    def hub(self) -> str:
        """Namespace holding the bridges."""
        return f"{self.prefix}-hub"

    def rates(self) -> dict[int, dict[int, float]]:
        """rank -> neighbour rank -> bandwidth (bit/s) of the link in that direction."""
        from flexpl.sim.simulator import build_topology

        topo = build_topology(self.scn)
        out: dict[int, dict[int, float]] = {r: {} for r in range(self.world)}
        for name, (a, b, prof) in topo.links.items():
            ra, rb = self.ranks[a], self.ranks[b]
            if rb in out[ra]:
                raise UserError(f"links: '{name}' is a second link between '{a}' and '{b}'; "
                                "--emulate-links needs at most one link per pair of nodes")
            out[ra][rb] = prof.bandwidth_up_bps
            out[rb][ra] = prof.bandwidth_down_bps
        return out

    def up(self) -> None:
        """Start the watchdog, then create everything (the watchdog removes it if we die halfway)."""
        from flexpl.dist.emulate.comm import control_ip, data_ip

        cleanup_stale()
        r_fd, w_fd = os.pipe()  # the write end stays in this process only (not inheritable)
        self.watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, self.prefix], stdin=r_fd,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        os.close(r_fd)
        self._pipe_w = w_fd
        rates = self.rates()
        _ip("ip", "netns", "add", self.hub)
        hub = ["link set lo up", "link add br0 type bridge", "link add br1 type bridge",
               "link set br0 up", "link set br1 up"]
        for r in range(self.world):
            _ip("ip", "netns", "add", self.ns(r))
            hub += [f"link add c{r} type veth peer name eth0 netns {self.ns(r)}",
                    f"link add d{r} type veth peer name eth1 netns {self.ns(r)}",
                    f"link set c{r} master br0", f"link set d{r} master br1",
                    f"link set c{r} up", f"link set d{r} up"]
        _ip("ip", "-n", self.hub, "-batch", "-", stdin="\n".join(hub) + "\n")
        for r in range(self.world):
            _ip("ip", "-n", self.ns(r), "-batch", "-", stdin="\n".join([
                "link set lo up", f"addr add {control_ip(r)}/16 dev eth0", "link set eth0 up",
                f"addr add {data_ip(r)}/16 dev eth1", "link set eth1 up"]) + "\n")
            tc = ["qdisc add dev eth1 root handle 1: htb default 1",
                  "class add dev eth1 parent 1: classid 1:1 htb rate 10gbit"]
            for peer, bps in sorted(rates[r].items()):
                cid = 10 + peer
                bps *= WIRE_OVERHEAD
                tc += [f"class add dev eth1 parent 1: classid 1:{cid:x} htb rate {int(bps)}bit ceil {int(bps)}bit",
                       f"filter add dev eth1 parent 1: protocol ip prio 1 u32 match ip dst {data_ip(peer)}/32 "
                       f"flowid 1:{cid:x}"]
            _ip("tc", "-n", self.ns(r), "-batch", "-", stdin="\n".join(tc) + "\n")

    def data_down(self) -> list[int]:
        """Ranks whose data veth is down (either end), e.g. a cable pulled during the run."""
        hub = _ip("ip", "-n", self.hub, "-br", "link", "show", check=False)
        state = {ln.split()[0].split("@")[0]: ln.split()[1] for ln in hub.splitlines() if len(ln.split()) > 1}
        out = []
        for r in range(self.world):
            mine = _ip("ip", "-n", self.ns(r), "-br", "link", "show", "eth1", check=False).split()
            if state.get(f"d{r}") != "UP" or (len(mine) > 1 and mine[1] != "UP"):
                out.append(r)
        return out

    def down(self) -> None:
        """Delete everything; close the watchdog's pipe (it then finds nothing left and exits)."""
        cleanup(self.prefix)
        if self._pipe_w is not None:
            os.close(self._pipe_w)
            self._pipe_w = None
        if self.watchdog is not None:
            try:
                self.watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.watchdog.kill()


# ---------------------------------------------------------------- profiles


def cache_path() -> Path:
    """Where the measured profile of this machine is cached."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "flexpl" / "calibrated-1thread.yaml"


def calibrated_profile(path: str | None, quiet: bool = True) -> Path:
    """The device profile to give every node: ``path`` if given, else this machine's (measured once, cached)."""
    from flexpl.system.profiles import device_profile

    if path is not None:
        p = Path(path).resolve()
        if not p.is_file():
            raise UserError(f"--emulate-profile: no file '{path}'; write one with "
                            "flexpl calibrate --threads 1 --out FILE.yaml")
        device_profile(str(p), field="--emulate-profile")
        return p
    p = cache_path()
    if not p.is_file():
        import platform

        import torch

        from flexpl.costs.calibrate import calibrate, profile_yaml
        from flexpl.io.results import atomic_write

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as every worker runs
        try:
            fields, results, how = calibrate(10, 32, None, None)
        finally:
            torch.set_num_threads(threads)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, profile_yaml(platform.node() or "this-machine", fields, results, how, 32))
        if not quiet:
            print(f"calibrated this machine: {fields['flops_per_s']:.3e} FLOP/s (1 thread) -> {p}")
    return p


def emulated_scenario(scn: Scenario, profile: Path) -> Scenario:
    """``scn`` with every node's device profile replaced by ``profile`` (inline device fields dropped)."""
    from flexpl.config.scenario import validate_scenario

    data = scn.resolved()
    keep = ("name", "profile", "holds_data", "rank")
    data["nodes"] = [{k: v for k, v in dict(n, profile=str(profile)).items() if k in keep} for n in data["nodes"]]
    return validate_scenario(data)


# ---------------------------------------------------------------- reports


def write_reports(out: Path, work: Path, node_of: dict[int, str]) -> tuple[list[dict], list[dict]]:
    """emulation.csv and links_measured.csv from rounds.csv and the workers' dumps; returns their rows."""
    from flexpl.io.results import write_csv

    rounds = list(csv.DictReader((out / "rounds.csv").open()))
    rows, prev = [], 0.0
    for r in rounds:
        sim = float(r["sim_time_s"])
        pred, wall = sim - prev, float(r["wall_s"])
        prev = sim
        rows.append({"round": int(r["round"]), "sim_time_s": pred, "wall_s": wall,
                     "ratio": wall / pred if pred > 0 else float("nan")})
    write_csv(out / "emulation.csv", rows)
    predicted = json.loads((work / "emu_predicted.json").read_text())
    measured: dict[tuple[int, str, str, str], list[float]] = {}
    for f in sorted(work.glob("emu_measured_rank*.json")):
        for rnd, link, src, dst, nbytes, secs in json.loads(f.read_text()):
            m = measured.setdefault((int(rnd), link, node_of[src], node_of[dst]), [0, 0, 0.0])
            m[0] += 1
            m[1] += nbytes
            m[2] += secs
    links = []
    # the rounds this launch ran: the last ones (a resumed run's traces start after its checkpoint)
    for rnd, per in enumerate(predicted, start=len(rounds) - len(predicted) + 1):
        for key, (count, nbytes, secs) in sorted(per.items()):
            link, src, dst = key.split("|")
            m = measured.get((rnd, link, src, dst), [0, 0, 0.0])
            links.append({"round": rnd, "link": link, "src": src, "dst": dst, "messages": count,
                          "bytes": nbytes, "measured_messages": m[0], "measured_bytes": m[1],
                          "predicted_s": secs, "measured_s": m[2],
                          "ratio": m[2] / secs if secs > 0 else float("nan")})
    write_csv(out / "links_measured.csv", links)
    return rows, links


def print_tables(rows: list[dict], links: list[dict], title: str, quiet: bool) -> None:
    """The two comparisons as rich tables."""
    if quiet:
        return
    from rich.table import Table

    from flexpl.io.console import make_console as _console

    c = _console(False)
    t = Table(title=f"{title}: round time, virtual clock vs measured")
    for col in ("round", "sim_time_s", "wall_s", "wall/sim"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["round"]), f"{r['sim_time_s']:.3f}", f"{r['wall_s']:.3f}", f"{r['ratio']:.3f}")
    c.print(t)
    t = Table(title=f"{title}: transfer time per link direction, all rounds")
    for col in ("link", "from", "to", "messages", "bytes", "predicted_s", "measured_s", "measured/predicted"):
        t.add_column(col, justify="left" if col in ("link", "from", "to") else "right")
    total: dict[tuple[str, str, str], list[float]] = {}
    for r in links:
        a = total.setdefault((r["link"], r["src"], r["dst"]), [0, 0, 0.0, 0.0])
        a[0] += r["messages"]
        a[1] += r["bytes"]
        a[2] += r["predicted_s"]
        a[3] += r["measured_s"]
    for (link, src, dst), (n, b, p, m) in sorted(total.items()):
        t.add_row(link, src, dst, str(int(n)), f"{int(b):,}", f"{p:.3f}", f"{m:.3f}",
                  f"{m / p:.3f}" if p > 0 else "-")
    c.print(t)


# ---------------------------------------------------------------- the run


def run_emulated(scn: Scenario, out: Path, timeout_s: float | None, quiet: bool,
                 profile: str | None = None, resume: bool = False) -> dict[str, Any]:
    """``flexpl run --backend dist --emulate-links``: the dist backend in shaped namespaces; returns the summary
    (``resume``: continue the run stopped in ``out`` from its checkpoint)."""
    import secrets
    import tempfile

    from flexpl.dist.emulate.comm import MEDIUM_ENV, TOKEN_ENV, control_ip
    from flexpl.dist.launch import run_dist
    from flexpl.dist.ranks import WorkerFailure, node_ranks
    from flexpl.sim.simulator import build_topology

    check_host()
    scn = emulated_scenario(scn, calibrated_profile(profile, quiet))
    ranks = node_ranks(scn)
    node_of = {r: n for n, r in ranks.items()}
    if resume:  # refused in one line before any namespace is made
        from flexpl.dist.checkpoint import check_resume

        check_resume(Path(out), scn.digest(), len(ranks))
    for f in (Path(out) / "workers").glob("emu_*.json"):  # no stale measurements from an earlier run
        f.unlink()
    net = ShapedNetwork(scn, ranks)
    medium = tempfile.mkdtemp(prefix="flexpl-medium-")  # half-duplex links' locks (comm.py [Note: half duplex])
    try:
        net.up()
        env = {"MASTER_ADDR": control_ip(0), "GLOO_SOCKET_IFNAME": "eth0", EMULATE_ENV: "1",
               TOKEN_ENV: secrets.token_hex(8),  # data connections greet with it (comm.py)
               MEDIUM_ENV: medium}
        try:
            summary = run_dist(scn, out, timeout_s, quiet, extra_env=env,
                               rank_env=lambda r: {NETNS_ENV: net.ns(r)}, resume=resume)
        except WorkerFailure as exc:  # a data link that went down is the likelier cause: name it first
            down = net.data_down()
            if not down:
                raise
            names = sorted(name for name, (a, b, _p) in build_topology(scn).links.items()
                           if ranks[a] in down or ranks[b] in down)
            nodes = " and ".join(f"'{node_of[r]}'" for r in down)
            raise WorkerFailure(f"link {', '.join(names)} went down (the data interface of node {nodes} is "
                                f"down): {exc}") from None
    finally:
        net.down()
        shutil.rmtree(medium, ignore_errors=True)
    out = Path(out).resolve()
    rows, links = write_reports(out, out / "workers", node_of)
    print_tables(rows, links, f"{scn.name} / {scn.strategy} (emulated links)", quiet)
    return summary
