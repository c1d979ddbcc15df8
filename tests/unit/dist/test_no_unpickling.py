"""Nothing that travels between ranks is unpickled: the emulated data port refuses a pickle, junk and a
wrong size in one line, before it takes any payload; the dist package never calls a deserializer."""

from __future__ import annotations

import ast
import pickle
import queue
import socket
import struct
import threading
from pathlib import Path

import pytest
import torch

import flexpl.dist
from flexpl.dist.emulate import comm as emu
from flexpl.dist.transport import Comm, MalformedMessage


class _Touch:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def port():
    """Rank 2 (dev0) reading what rank 1 (edge) writes on a data connection (a socket pair, no namespace)."""
    c = emu.EmuComm.__new__(emu.EmuComm)  # the receiving half only: no listener on the data network
    Comm.__init__(c, 2, 10.0)
    c.node_of, c.in_q, c.round, c.log = {1: "edge", 2: "dev0"}, {1: queue.Queue()}, 2, []
    c.half, c._lost = {}, {}  # no half-duplex link, no lost copy pending
    theirs, mine = socket.socketpair()
    threading.Thread(target=c._receiver, args=(1, mine), daemon=True).start()
    yield c, theirs
    theirs.close()


SPEC = [((4,), torch.float32)]


def test_a_well_formed_message_arrives(port):
    c, peer = port
    t = torch.arange(4, dtype=torch.float32)
    peer.sendall(emu._HEADER.pack(emu._MAGIC, 16, 0.0) + emu._as_bytes(t))
    assert torch.equal(c.recv_bundle(SPEC, 1, "dev0-edge")[0], t)


@pytest.mark.parametrize("what", ["pickle", "junk"])
def test_a_pickle_or_junk_is_refused_in_one_line_and_never_unpickled(port, tmp_path, what):
    c, peer = port
    marker = tmp_path / "unpickled"
    peer.sendall(pickle.dumps(_Touch(str(marker))) if what == "pickle" else bytes(range(256)))
    with pytest.raises(MalformedMessage) as exc:
        c.recv_bundle(SPEC, 1, "dev0-edge")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("malformed message from node 'edge' (rank 1) on link dev0-edge: "
                                              "not a FlexPL message (it starts "), msg
    assert not marker.exists()


def test_a_wrong_size_is_refused_before_the_payload_is_taken(port):
    """A header announcing 2**60 bytes is refused at once: nothing waits for or allocates them."""
    c, peer = port
    peer.sendall(emu._HEADER.pack(emu._MAGIC, 2**60, 0.0))
    with pytest.raises(MalformedMessage, match=r"it announces 1152921504606846976 bytes where 16 are expected"):
        c.recv_bundle(SPEC, 1, "dev0-edge")


def test_a_stranger_greeting_is_refused(tmp_path):
    c = emu.EmuComm.__new__(emu.EmuComm)
    Comm.__init__(c, 3, 10.0)
    c.token, c.socks = b"t" * 16, {}
    for hello, why in [(pickle.dumps(_Touch(str(tmp_path / "x"))), "not a FlexPL greeting"),
                       (emu._HELLO.pack(emu._HELLO_MAGIC, b"u" * 16, 1), "another run"),
                       (emu._HELLO.pack(emu._HELLO_MAGIC, b"t" * 16, 0), "claims rank 0")]:
        theirs, mine = socket.socketpair()
        theirs.sendall(hello)
        with pytest.raises(MalformedMessage, match=f"refused a connection to its data port from 10.78.0.9: .*{why}"):
            c._greeted(mine, "10.78.0.9", {1})
        theirs.close()
    theirs, mine = socket.socketpair()
    theirs.sendall(emu._HELLO.pack(emu._HELLO_MAGIC, b"t" * 16, 1))
    assert c._greeted(mine, "10.78.0.2", {1}) == 1
    assert not (tmp_path / "x").exists() and struct.calcsize("<8s16sI") == emu._HELLO.size


def test_the_dist_package_calls_no_deserializer():
    """No pickle, no torch.load, no *_object collective anywhere in flexpl.dist."""
    banned = {"pickle", "marshal", "dill", "cloudpickle"}
    calls = {"recv_object_list", "broadcast_object_list", "gather_object", "all_gather_object",
             "scatter_object_list"}
    for path in Path(flexpl.dist.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not banned & {str(n).split(".")[0] for n in names}, (path, ast.dump(node))
            if isinstance(node, ast.Attribute) and (node.attr in calls or (
                    node.attr in ("load", "loads") and isinstance(node.value, ast.Name) and node.value.id == "torch")):
                raise AssertionError(f"{path}:{node.lineno}: .{node.attr}")
