"""Moving tensors between processes: gloo point-to-point sends along the topology's routes.

``DistTransport`` is the distributed twin of ``SimTransport``: the engine calls the same
``move``/``move_state``, the crossing is recorded in the same ``Recorder`` (so accounted
bytes are identical on every rank and equal to the simulator's), and in addition the
tensor really travels, hop by hop over ``Topology.route(src, dst)``: the hop's sender
rank ``send``s, its receiver rank ``recv``s into a buffer shaped like the tensor (every
rank knows the shape: the tensor is real where it lives and a meta twin everywhere
else), and an intermediate node forwards what it received. The bytes that cross each
pair of processes are therefore exactly the bytes the topology says cross each link, and
``Comm`` counts them as they are sent.

[Note: no deadlock] Every rank walks the same global program (same rounds, same
schedule, same stage order; see ``core.py`` [Note: meta replicas]) and so meets the
transfers in the same global order h1, h2, ...; a rank only takes part in the hops it
sends or receives. Suppose h1..h(k-1) have completed and hk goes from rank a to rank b.
The next communication a and b reach is hk (anything they do in between is local
compute, which terminates), so both post it, the pair matches it (gloo matches sends and
receives between two ranks in posting order with the same tag, and both sides post their
shared hops in the same order), and hk completes. By induction every transfer completes,
even if ``send`` blocked until the receiver was ready. A peer that dies or hangs breaks
the induction, which is what the per-operation timeout turns into a clear error.

[Note: lost transfers] With ``failures.transfer_loss`` (or a link's ``loss``), the
``Recorder`` draws for each hop how many tries it takes until one arrives and bills them
all. Every rank records the same trace with the same seeded draws, so both ends of a hop
know its tries (``Recorder.last_tries``): the sender sends the hop that many times and
the receiver reads every copy and keeps the last, the earlier ones standing for the
transmissions lost on the way. The bytes that cross each link (``measured_bytes``) are
then the billed bytes, resends included, and under ``--emulate-links`` each resend pays
the link's latency and bandwidth again, as the clock's hop does. The copies are sent in a
row, so the argument of [Note: no deadlock] is unchanged (a hop is a fixed number of
sends matched by as many receives).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from flexpl.costs.trace import Event, Recorder
from flexpl.sim.transport import tensor_bytes
from flexpl.system.topology import Topology

# Message tags: training traffic (measured), bookkeeping (evaluation weights, round ends,
# final counters: never measured) and rank 0's keepalives while it evaluates. Separate
# tags keep the streams apart.
TAG_TRAIN, TAG_AUX, TAG_HOLD = 0, 1, 2


class PeerFailure(RuntimeError):
    """A send or receive with another rank failed (peer dead, hung, or connection lost)."""

    def __init__(self, peer: int, op: str, reason: str, detail: str) -> None:
        super().__init__(f"{op} with rank {peer} failed: {reason}")
        self.peer = peer
        self.op = op
        self.reason = reason  # "timeout" or "closed" or "error"
        self.detail = detail


class MalformedMessage(RuntimeError):
    """Bytes from another rank (or a stranger) that are not a FlexPL message; refused, never deserialized.

    The message is one line naming where they came from (see ``emulate/comm.py``
    [Note: nothing is unpickled]).
    """


class Comm:
    """Blocking point-to-point sends/receives with a timeout, byte counters and a 'blocked on' status.

    ``blocked`` says which peer this rank is waiting for right now (read by the status
    thread, so a launcher can follow a chain of waiting ranks to the one that hangs).
    """

    def __init__(self, rank: int, timeout_s: float) -> None:
        self.rank = rank
        self.timeout = timedelta(seconds=timeout_s)
        self.sent: dict[str, int] = {}       # link -> bytes this rank sent on it (training only)
        self.received: dict[str, int] = {}   # link -> bytes this rank received on it (training only)
        # (op, peer, since); a plain attribute: assigning a tuple is atomic under the GIL
        self.blocked: tuple[str, int, float] | None = None

    def _wait(self, work: dist.Work, op: str, peer: int) -> None:
        """Wait for ``work`` at most the timeout; a failure becomes a ``PeerFailure`` naming ``peer``."""
        self.blocked = (op, peer, time.time())
        try:
            work.wait(timeout=self.timeout)
        except RuntimeError as exc:  # gloo reports every failure as RuntimeError
            msg = str(exc)
            reason = "timeout" if "imed out" in msg or "timeout" in msg.lower() else (
                "closed" if "closed" in msg.lower() or "reset" in msg.lower() else "error")
            raise PeerFailure(peer, op, reason, msg.splitlines()[0] if msg else "") from None
        finally:
            self.blocked = None

    def _transfer(self, op: str, start: Callable[..., dist.Work], t: torch.Tensor, peer: int, tag: int,
                  link: str | None, counts: dict[str, int]) -> None:
        """Start ``op`` (``dist.isend`` or ``dist.irecv`` of ``t``) and wait for it; count its bytes on ``link``."""
        try:
            work = start(t, peer, tag=tag)
        except RuntimeError as exc:
            raise PeerFailure(peer, op, "closed", str(exc).splitlines()[0]) from None
        self._wait(work, op, peer)
        if link is not None:
            counts[link] = counts.get(link, 0) + tensor_bytes(t)

    def send(self, t: torch.Tensor, peer: int, link: str | None = None, tag: int = TAG_TRAIN) -> None:
        """Send ``t`` to ``peer``; bytes count on ``link`` when given (training traffic)."""
        if t.is_meta:
            raise RuntimeError(f"internal error: rank {self.rank} was asked to send a tensor it does not hold")
        t = t.detach().contiguous()
        if t.numel() == 0:  # nothing on the wire; the receiver skips it too
            return
        self._transfer("send", dist.isend, t, peer, tag, link, self.sent)

    def recv(self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype, peer: int,
             link: str | None = None, tag: int = TAG_TRAIN) -> torch.Tensor:
        """Receive a tensor of ``shape``/``dtype`` from ``peer`` into a fresh buffer."""
        buf = torch.empty(tuple(shape), dtype=dtype)
        if buf.numel() == 0:
            return buf
        self._transfer("recv", dist.irecv, buf, peer, tag, link, self.received)
        return buf


def meta_like(t: torch.Tensor) -> torch.Tensor:
    """A shape-only twin of ``t`` (what a rank that does not hold the tensor works with)."""
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


class DistTransport:
    """Transport between ranks: records each crossing like ``SimTransport`` and moves it hop by hop.

    ``me`` is the node this process runs; ``rank_of`` maps every node to its rank. The
    returned tensor is real on the destination's rank and a meta twin on every other.
    """

    def __init__(self, recorder: Recorder, me: str, rank_of: Mapping[str, int], comm: Comm) -> None:
        self.recorder = recorder
        self.topo: Topology = recorder.topo
        self.me = me
        self.rank_of = dict(rank_of)
        self.comm = comm

    def _carry(self, t: torch.Tensor, src: str, dst: str, tries: Sequence[int] = ()) -> torch.Tensor:
        """Forward ``t`` from ``src`` to ``dst`` along the route; this rank does only its own hops.

        Hop ``i`` is sent ``tries[i]`` times (1 where not given) [Note: lost transfers]: the
        receiver reads and drops all copies but the last.
        """
        if src == dst:
            return t
        cur = t
        for i, hop in enumerate(self.topo.route(src, dst)):
            n = tries[i] if i < len(tries) else 1
            if hop.src == self.me:
                for _ in range(n):
                    self.comm.send(cur, self.rank_of[hop.dst], hop.link)
            elif hop.dst == self.me:
                for _ in range(n):
                    cur = self.comm.recv(t.shape, t.dtype, self.rank_of[hop.src], hop.link)
        return cur if self.me == dst else meta_like(t)

    def move(self, t: torch.Tensor, src: str, dst: str, what: str, deps: Iterable[Event],
             label: str = "") -> tuple[torch.Tensor, Event]:
        """Send ``t`` from ``src`` to ``dst`` (nothing if equal); returns it (real at ``dst``) and the arrival event."""
        ev = self.recorder.transfer(src, dst, tensor_bytes(t), deps, what, label)
        if hasattr(self.comm, "send_bundle"):  # emulated links: a bundle of one (its resends logged as one hop)
            return self._carry_bundle({"t": t}, src, dst, self.recorder.last_tries)["t"], ev
        return self._carry(t, src, dst, self.recorder.last_tries), ev

    def move_state(self, state: Mapping[str, torch.Tensor], src: str, dst: str, what: str,
                   deps: Iterable[Event], label: str = "") -> tuple[dict[str, torch.Tensor], Event]:
        """Send a whole state dict, tensor by tensor in key order (accounted as one message)."""
        nbytes = sum(tensor_bytes(v) for v in state.values())
        ev = self.recorder.transfer(src, dst, nbytes, deps, what, label)
        tries = self.recorder.last_tries
        if hasattr(self.comm, "send_bundle"):  # emulated links: one message, one latency (emulate_comm.py)
            return self._carry_bundle(state, src, dst, tries), ev
        return {k: self._carry(v, src, dst, tries) for k, v in state.items()}, ev

    def _carry_bundle(self, state: Mapping[str, torch.Tensor], src: str, dst: str,
                      tries: Sequence[int] = ()) -> dict[str, torch.Tensor]:
        """``_carry`` for a whole state dict sent as one message per hop (``EmuComm.send_bundle``)."""
        if src == dst:
            return dict(state)
        cur = list(state.values())
        specs = [(v.shape, v.dtype) for v in state.values()]
        for i, hop in enumerate(self.topo.route(src, dst)):
            n = tries[i] if i < len(tries) else 1
            if hop.src == self.me:
                self.comm.send_bundle(cur, self.rank_of[hop.dst], hop.link, copies=n)
            elif hop.dst == self.me:
                for k in range(n):  # the copies before the last were lost on the way: read and dropped
                    cur = self.comm.recv_bundle(specs, self.rank_of[hop.src], hop.link, lost=k < n - 1)
        if self.me == dst:
            return dict(zip(state.keys(), cur))
        return {k: meta_like(v) for k, v in state.items()}
