"""Training traffic of an emulated run: one TCP connection per link, eager in both directions.

Under ``flexpl run --backend dist --emulate-links`` (see ``emulate.py``) every worker runs
in its own network namespace, and the kernel shapes each link direction with an HTB class
on the sender's data interface. ``EmuComm`` carries the training hops (``DistTransport``'s
``TAG_TRAIN`` sends) over plain TCP on that data interface instead of gloo, because the
virtual clock assumes things that gloo's blocking point-to-point does not do:

- a node does not wait for its sends: the clock holds the link, not the sender, for a hop
  (the server sends the model to every device at once). Here ``send`` queues the message
  for a per-peer sender thread and returns;
- a hop starts when the link is free, whether or not the receiver has asked for it yet
  (gloo sends an unbound buffer only once the receiver has posted its receive, so a
  server collecting uploads one after another would pull them one at a time). Here a
  per-peer receiver thread reads every message as soon as it arrives;
- a hop lasts ``latency + 8 * bytes / bandwidth``. This kernel has no ``netem``, so the
  sender thread sleeps the link's latency before it writes each message, and a message
  is one accounted transfer (a state dict travels as one bundle, so it pays the latency
  once, as in the clock).

- a half-duplex link (``duplex: half``, e.g. Wi-Fi) is one medium for both directions: the
  clock queues their hops on one resource. The kernel shapes each direction in its
  sender's namespace, so here the two senders take turns instead [Note: half duplex].

Bookkeeping (losses, evaluation weights, counters, keepalives) still goes through gloo,
on the namespaces' control interface, which is not shaped and not measured.

Each received message is timed: from the moment the sender thread took it (before the
latency; on a half-duplex link, once it got the medium) or, if later, the moment the previous message on that link direction finished
arriving, to the moment its last byte arrived; both ends read the same ``CLOCK_MONOTONIC``
(network namespaces share it). ``dump`` writes these times for the launcher's report, one
entry per hop: a lost transfer's resends are added to the copy that is kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import select
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from flexpl.costs.flops import count_fwd_bwd
from flexpl.costs.trace import HOP
from flexpl.dist.transport import TAG_TRAIN, Comm, MalformedMessage, PeerFailure
from flexpl.io import injected_faults as faults
from flexpl.sim.transport import tensor_bytes
from flexpl.system.topology import Topology

DATA_PORT = 29611
# [Note: nothing is unpickled] The data port carries raw tensor bytes only. A connection
# opens with a greeting (magic, the run's token, the sender's rank) and every message with
# a header (magic, payload bytes, sender's pick-up time); the receiver knows the shape and
# dtype of every message it expects (``recv_bundle``'s specs), checks the announced size
# against them before it takes the payload, and copies the bytes into fresh tensors. A
# header that does not fit (a pickle, junk, a wrong size) on a peer's data connection
# stops the receiving rank with a one-line ``MalformedMessage``; a connection whose
# greeting does not fit is refused and the run carries on, unless it comes from a peer
# the rank still waits for (see ``EmuComm._doorman`` [Note: strangers]). Nothing is ever
# deserialized.
_HELLO = struct.Struct("<8s16sI")  # magic, run token, sender's rank
_HELLO_MAGIC = b"FLEXPL\x00\x01"
_HEADER = struct.Struct("<4sQd")  # magic, payload bytes, sender's pick-up time (time.monotonic)
_MAGIC = b"FXPM"
_CHUNK = 1 << 26  # a payload is read in pieces of at most 64 MiB: a huge announced size allocates nothing
TOKEN_ENV = "FLEXPL_RUN_TOKEN"  # set by the launcher: a random token every rank of one run shares
MEDIUM_ENV = "FLEXPL_EMU_MEDIUM"  # set by the launcher: a folder for the half-duplex links' locks and FIFOs

# [Note: half duplex] Both ends of a half-duplex link share one transmitter's worth of
# air time: while one direction carries a message, the other waits. The two sender
# threads (in two processes, in two network namespaces, on one filesystem) take turns on
# an exclusive ``flock`` of the file ``half-<a>-<b>.lock`` in the run's medium folder
# (``MEDIUM_ENV``): a sender takes it before the link's latency, writes the message, and
# lets go once the receiver has read its last byte, which the receiver's thread says by
# writing one byte to the FIFO ``ack-<src>-<dst>`` (beside the lock, so no byte of it
# travels over the shaped network). A hop therefore holds the medium for latency + bytes
# / bandwidth, as the clock's single resource does, and a message's measured time starts
# when its sender got the medium. Full-duplex links take no lock.


def data_ip(rank: int) -> str:
    """Address of ``rank``'s data (shaped) interface."""
    return f"10.78.{(rank + 2) // 256}.{(rank + 2) % 256}"


def control_ip(rank: int) -> str:
    """Address of ``rank``'s control (unshaped, gloo) interface."""
    return f"10.77.{(rank + 2) // 256}.{(rank + 2) % 256}"


def _as_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _from_bytes(buf: memoryview, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    if len(buf) == 0:
        return torch.empty(tuple(shape), dtype=dtype)
    return torch.frombuffer(bytearray(buf), dtype=dtype).reshape(tuple(shape))


class _Head:
    """A message header as the receiver thread saw it (the payload follows in the queue)."""

    def __init__(self, n: int) -> None:
        self.n = n


class _Raw:
    """Bytes a sender thread writes as they are, without a frame (the fault hook's junk)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


class EmuComm(Comm):
    """``Comm`` whose training sends go over per-link TCP connections (queued, eager); the rest over gloo."""

    def __init__(self, rank: int, timeout_s: float) -> None:
        super().__init__(rank, timeout_s)
        # the link threads must get the GIL promptly while the main thread runs Python-heavy
        # engine code (default switch interval: 5 ms, a large share of a small message's time)
        sys.setswitchinterval(0.0005)
        # listen before the process group forms, so every peer is listening once it has
        self.listener = socket.create_server((data_ip(rank), DATA_PORT), backlog=64)
        self.out_q: dict[int, queue.Queue] = {}
        self.in_q: dict[int, queue.Queue] = {}
        self.socks: dict[int, socket.socket] = {}
        self.round = 1
        self.log: list[list] = []  # [round, link, src rank, dst rank, bytes, seconds] per received message
        self.fault = faults.emulation_fault(rank)  # test hook: junk on a data port, a link down
        self.token = os.environ.get(TOKEN_ENV, "").encode()[:16].ljust(16, b"\0")
        self.node_of: dict[int, str] = {}
        self._lost: dict[tuple[int, str], tuple[int, float]] = {}  # (peer, link) -> lost copies' bytes, seconds

    # ------------------------------------------------------------ set-up

    def connect(self, topo: Topology, rank_of: Mapping[str, int]) -> None:
        """Open one connection per neighbour (the lower rank connects) and start its threads."""
        node_of = self.node_of = {r: n for n, r in rank_of.items()}
        me = node_of[self.rank]
        self.latency: dict[int, float] = {}
        self.half: dict[int, tuple[int, int, int]] = {}  # peer -> (medium lock fd, ack read fd, ack write fd)
        for _name, (a, b, prof) in topo.links.items():
            if me in (a, b):
                peer = rank_of[b if a == me else a]
                self.latency[peer] = prof.latency_s
                if prof.duplex == "half":
                    self.half[peer] = self._medium(peer)
        deadline = time.monotonic() + self.timeout.total_seconds()
        for peer in sorted(p for p in self.latency if p > self.rank):
            while True:
                try:
                    s = socket.create_connection((data_ip(peer), DATA_PORT), timeout=5)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise PeerFailure(peer, "connect", "timeout", "no data connection") from None
                    time.sleep(0.05)
            if self.fault and self.fault[1] == "pickle-hello":
                s.sendall(faults.evil_pickle())
            else:
                s.sendall(_HELLO.pack(_HELLO_MAGIC, self.token, self.rank))
            self.socks[peer] = s
        lower = {p for p in self.latency if p < self.rank}
        arrivals: queue.Queue = queue.Queue()
        threading.Thread(target=self._doorman, args=(lower, arrivals), daemon=True).start()
        while lower - self.socks.keys():
            try:
                got = arrivals.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise PeerFailure(min(lower - self.socks.keys()), "connect", "timeout",
                                  "no data connection") from None
            if isinstance(got, MalformedMessage):
                raise got
            self.socks[got[0]] = got[1]
        for peer, s in self.socks.items():
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.out_q[peer] = queue.Queue()
            self.in_q[peer] = queue.Queue()
            threading.Thread(target=self._sender, args=(peer, s), daemon=True).start()
            threading.Thread(target=self._receiver, args=(peer, s), daemon=True).start()

    def _medium(self, peer: int) -> tuple[int, int, int]:
        """The half-duplex link to ``peer``: (lock fd, fd to read its acks, fd to ack its messages) [Note: half duplex]."""
        folder = Path(os.environ.get(MEDIUM_ENV) or Path(tempfile.gettempdir()) / f"flexpl-medium-{self.token.hex()}")
        folder.mkdir(parents=True, exist_ok=True)
        lo, hi = sorted((self.rank, peer))
        lock = os.open(folder / f"half-{lo}-{hi}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fds = [lock]
        for src, dst in ((self.rank, peer), (peer, self.rank)):
            fifo = folder / f"ack-{src}-{dst}"
            with contextlib.suppress(FileExistsError):
                os.mkfifo(fifo, 0o600)
            fds.append(os.open(fifo, os.O_RDWR))  # read-write: opening never waits for the other end
        return fds[0], fds[1], fds[2]

    def _doorman(self, lower: set[int], arrivals: queue.Queue) -> None:
        """Answer the data port for the whole run (a thread): each connection is greeted on a thread of its own.

        [Note: strangers] The port stays open after set-up, as a server's does. A connection
        whose greeting is a peer's of this run that ``connect`` still waits for goes to
        ``arrivals``; any other (a pickle, junk, a wrong token, a rank already connected, a
        late or early stranger) is closed unread beyond its greeting, named in one line of
        the worker's log, and the run carries on. Only a bad greeting from the address of a
        peer ``connect`` still waits for stops the rank (a ``MalformedMessage`` in
        ``arrivals``): that peer is broken, and waiting for it would only time out.
        """
        claim = threading.Lock()
        taken: set[int] = set()

        def greet(s: socket.socket, addr: str) -> None:
            with claim:  # greeting threads run side by side: read ``taken`` under the lock
                waiting = lower - taken
            try:
                peer = self._greeted(s, addr, waiting)
            except MalformedMessage as exc:
                with claim:
                    expected = any(data_ip(p) == addr for p in lower - taken)
                if expected:
                    arrivals.put(exc)
                else:
                    from flexpl.dist.ranks import _log

                    _log(f"rank {self.rank} ({self.node_of.get(self.rank, '?')}): {exc}; the run carries on")
                return
            with claim:
                fresh = peer not in taken
                taken.add(peer)
            if fresh:
                arrivals.put((peer, s))
            else:  # two greetings claimed one rank at once: the second is a stranger
                s.close()

        self.listener.settimeout(None)
        while True:
            try:
                s, addr = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=greet, args=(s, addr[0]), daemon=True).start()

    def _greeted(self, s: socket.socket, addr: str, lower: set[int]) -> int:
        """The rank that opened ``s``, from its greeting; ``MalformedMessage`` unless it is a peer of this run."""
        s.settimeout(self.timeout.total_seconds())
        why = None
        try:
            magic, token, peer = _HELLO.unpack(_read(s, _HELLO.size))
        except (OSError, ConnectionError):
            magic, token, peer = b"", b"", -1
            why = "it sent no greeting"
        if why is None and magic != _HELLO_MAGIC:
            why = f"not a FlexPL greeting (it starts {bytes(magic[:8]).hex(' ')})"
        elif why is None and token != self.token:
            why = "a greeting from another run (wrong token)"
        elif why is None and (peer not in lower or peer in self.socks):
            why = f"it claims rank {peer}, which has no link to this rank or is connected already"
        if why is not None:
            s.close()
            raise MalformedMessage(f"refused a connection to its data port from {addr}: {why}; nothing it sent "
                                   "was unpickled")
        return int(peer)

    def _sender(self, peer: int, s: socket.socket) -> None:
        lat = self.latency[peer]
        q = self.out_q[peer]
        half = self.half.get(peer)
        try:
            while True:
                payload = q.get()
                if isinstance(payload, _Raw):  # test hook: bytes that are not a FlexPL message
                    s.sendall(payload.data)
                    continue
                if half:  # wait for the medium [Note: half duplex]
                    fcntl.flock(half[0], fcntl.LOCK_EX)
                picked = time.monotonic()
                try:
                    if lat > 0:  # the link's latency (no netem on this kernel): before the bytes leave
                        time.sleep(lat)
                    s.sendall(_HEADER.pack(_MAGIC, len(payload), picked))
                    if payload:
                        s.sendall(payload)
                    if half and not _acked(half[1], self.timeout.total_seconds()):
                        return  # the receiver is gone or stuck: its rank's own waits report it
                finally:
                    if half:
                        fcntl.flock(half[0], fcntl.LOCK_UN)
        except OSError:
            return  # the receiver side of the peer notices; our recv from it fails too

    def _receiver(self, peer: int, s: socket.socket) -> None:
        q = self.in_q[peer]
        ack = self.half[peer][2] if peer in self.half else None
        prev_done = 0.0
        try:
            while True:
                magic, n, picked = _HEADER.unpack(_read(s, _HEADER.size))
                if magic != _MAGIC:  # a pickle, junk, anything but our header: read nothing more
                    q.put(MalformedMessage(f"not a FlexPL message (it starts {bytes(magic).hex(' ')})"))
                    return
                q.put(_Head(n))  # recv_bundle checks the size before the payload is taken
                buf = _read_payload(s, n)
                done = time.monotonic()
                if ack is not None:  # the last byte is in: the sender may let go of the medium
                    os.write(ack, b"\x01")
                q.put((buf, done - max(picked, prev_done)))
                prev_done = done
        except (OSError, ConnectionError) as exc:
            q.put(exc)

    # ------------------------------------------------------------ traffic

    def send(self, t: torch.Tensor, peer: int, link: str | None = None, tag: int = TAG_TRAIN) -> None:
        """Training traffic (``link`` given): queued on the link's connection; the rest: gloo."""
        if link is None or tag != TAG_TRAIN:
            return super().send(t, peer, link, tag)
        self.send_bundle([t], peer, link)

    def recv(self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype, peer: int,
             link: str | None = None, tag: int = TAG_TRAIN) -> torch.Tensor:
        """Training traffic: the next message from ``peer`` on the link; the rest: gloo."""
        if link is None or tag != TAG_TRAIN:
            return super().recv(shape, dtype, peer, link, tag)
        return self.recv_bundle([(shape, dtype)], peer, link)[0]

    def send_bundle(self, tensors: Sequence[torch.Tensor], peer: int, link: str, copies: int = 1) -> None:
        """Queue ``tensors`` as one message (one latency) to ``peer``; copied now, sent by the link's thread.

        ``copies`` > 1 sends the message that many times in a row (a hop whose first tries
        were lost, see ``transport.py`` [Note: lost transfers]); each copy pays the latency.
        """
        if any(t.is_meta for t in tensors):
            raise RuntimeError(f"internal error: rank {self.rank} was asked to send a tensor it does not hold")
        if self.fault and self.fault[0] == self.round and self.fault[1] in faults.LINK_MODES:
            mode, self.fault = self.fault[1], None
            _pull_cable(self.rank, self.node_of.get(self.rank, "?"), faults.FLAP_S if mode == "link-flap" else None)
        if self.fault and self.fault[0] == self.round and self.fault[1] in ("pickle-frame", "garbage-frame"):
            mode, self.fault = self.fault[1], None
            self.out_q[peer].put(_Raw(faults.evil_pickle() if mode == "pickle-frame" else faults.GARBAGE))
        payload = b"".join(_as_bytes(t) for t in tensors)
        for _ in range(copies):
            self.out_q[peer].put(payload)
        self.sent[link] = self.sent.get(link, 0) + copies * sum(tensor_bytes(t) for t in tensors)

    def recv_bundle(self, specs: Sequence[tuple[Sequence[int], torch.dtype]], peer: int,
                    link: str, lost: bool = False) -> list[torch.Tensor]:
        """The next message from ``peer``, cut into tensors of the given shapes and dtypes.

        ``lost``: a copy that stands for a lost try of the hop (``transport.py`` [Note: lost
        transfers]); its bytes and seconds are counted and added to the hop's next message,
        so that ``dump`` logs one entry per hop, as the clock's trace has.
        """
        sizes = [int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size() for shape, dtype in specs]
        head = self._next(peer, link)
        if not isinstance(head, _Head) or head.n != sum(sizes):
            self._malformed(peer, link, f"it announces {getattr(head, 'n', '?')} bytes where {sum(sizes)} "
                                        "are expected")
        buf, seconds = self._next(peer, link)
        view = memoryview(buf)
        out, off = [], 0
        for (shape, dtype), n in zip(specs, sizes):
            out.append(_from_bytes(view[off:off + n], shape, dtype))
            off += n
        self.received[link] = self.received.get(link, 0) + off
        was = self._lost.pop((peer, link), (0, 0.0))
        if lost:
            self._lost[(peer, link)] = (was[0] + off, was[1] + seconds)
        else:
            self.log.append([self.round, link, peer, self.rank, was[0] + off, was[1] + seconds])
        return out

    def _next(self, peer: int, link: str) -> Any:
        """The next item the receiver thread of ``peer`` queued; a failure as ``PeerFailure`` or ``MalformedMessage``."""
        self.blocked = ("recv", peer, time.time())
        try:
            got = self.in_q[peer].get(timeout=self.timeout.total_seconds())
        except queue.Empty:
            raise PeerFailure(peer, "recv", "timeout", "no data within the timeout") from None
        finally:
            self.blocked = None
        if isinstance(got, MalformedMessage):
            self._malformed(peer, link, str(got))
        if isinstance(got, BaseException):
            raise PeerFailure(peer, "recv", "closed", str(got) or type(got).__name__)
        return got

    def _malformed(self, peer: int, link: str, why: str) -> NoReturn:
        raise MalformedMessage(f"malformed message from node '{self.node_of.get(peer, '?')}' (rank {peer}) on link "
                               f"{link}: {why}; refused, nothing was unpickled")

    def dump(self, path: Path) -> None:
        """Write the measured times of the messages this rank received."""
        path.write_text(json.dumps(self.log))


def warm_up() -> None:
    """Run once what every first training step pays for (autograd, optimizer, FLOP counter, meta tensors).

    Called before the workers meet, so that round 1's wall time compares with the clock
    like later rounds do; the virtual clock has no such one-time costs.
    """
    from torch import nn

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    count_fwd_bwd(model, (4, 8), input_grad=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for device in ("cpu", "meta"):
        m = model.to(device) if device == "cpu" else nn.Sequential(nn.Linear(8, 8), nn.ReLU()).to("meta")
        x = torch.zeros(4, 8, device=device, requires_grad=True)
        m(x).sum().backward()
    opt.step()
    opt.zero_grad()
    # glibc serves large blocks with mmap until one is freed, then raises its threshold to
    # that size: free one 32 MB block now so that activations come from the heap in round 1 too
    big = torch.ones(8 * 1024 * 1024)
    del big


def _acked(fd: int, timeout_s: float) -> bool:
    """Wait at most ``timeout_s`` for the receiver's one-byte ack on FIFO ``fd``; False if none came."""
    ready, _, _ = select.select([fd], [], [], timeout_s)
    return bool(ready) and len(os.read(fd, 1)) == 1


def _read(s: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = s.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("connection closed")
        got += k
    return buf


def data_veth(ns: str, rank: int) -> tuple[str, str]:
    """(hub namespace, interface) of the hub's end of ``rank``'s data veth, from the rank's namespace ``ns``
    (``flexpl-<pid>-<rank>``; see ``links.ShapedNetwork``)."""
    return f"{ns.rsplit('-', 1)[0]}-hub", f"d{rank}"


def _pull_cable(rank: int, node: str, seconds: float | None) -> None:
    """Test hook: set this rank's data veth down (the hub's end), for ``seconds`` or for good."""
    import subprocess

    from flexpl.dist.ranks import _log

    hub, veth = data_veth(os.environ["FLEXPL_NETNS"], rank)  # links.NETNS_ENV: this rank's namespace
    subprocess.run(["ip", "-n", hub, "link", "set", veth, "down"], check=True)
    _log(f"rank {rank} ({node}): test hook: data link down" + (f" for {seconds:g} s" if seconds else ""))
    if seconds:
        threading.Timer(seconds, subprocess.run, (["ip", "-n", hub, "link", "set", veth, "up"],),
                        {"check": True}).start()


def _read_payload(s: socket.socket, n: int) -> bytes | bytearray:
    """``n`` bytes from ``s``, allocated as they arrive (in pieces of at most ``_CHUNK``)."""
    if n <= _CHUNK:
        return _read(s, n)
    parts = []
    while n > 0:
        parts.append(_read(s, min(n, _CHUNK)))
        n -= len(parts[-1])
    return b"".join(parts)


# ---------------------------------------------------------------- worker side of the launcher

_CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move this (single-threaded, just forked) process into network namespace ``name``."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def predicted_links(traces: list, topo: Any) -> list[dict[str, list]]:
    """Per round, ``"link|src|dst"`` -> [hops, bytes, seconds] of the clock's hops (from the run's traces).

    Hops are keyed by the link between their endpoints, whatever resource the clock booked
    them on (one per link, or one per direction of a full-duplex link).
    """
    link_of = {}
    for name, (a, b, _prof) in topo.links.items():
        link_of[(a, b)] = link_of[(b, a)] = name
    out = []
    for trace, _starts, _ends in traces:
        per: dict[str, list] = {}
        for i in range(len(trace)):
            if trace.kind[i] == HOP:
                link = link_of.get((trace.src[i], trace.dst[i]), trace.resource[i])
                p = per.setdefault(f"{link}|{trace.src[i]}|{trace.dst[i]}", [0, 0, 0.0])
                p[0] += 1
                p[1] += trace.amount[i]
                p[2] += trace.duration[i]
        out.append(per)
    return out
