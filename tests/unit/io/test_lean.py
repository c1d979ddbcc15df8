"""The ``flexpl`` command's process runs without importing torch._dynamo, with results unchanged (flexpl.io.lean)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

_RUN = ["run", "digits-star", "--strategy", "fpl", "--set", "training.rounds=2", "--set",
        "training.max_steps_per_round=3", "--quiet"]

# argv None: as the flexpl command (stand-in installed); a list: as a library caller (torch as it is)
_CHILD = """
import json, sys
from flexpl.cli import main
lean = sys.argv[1] == "lean"
if lean:
    sys.argv = ["flexpl", *sys.argv[2:]]
    rc = main()
else:
    rc = main(sys.argv[2:])
mod = sys.modules.get("torch._dynamo")
print(json.dumps({"rc": rc, "dynamo": None if mod is None else type(mod).__name__}))
"""


def _child(mode: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", _CHILD, mode, *args], capture_output=True, text=True, timeout=300,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", **_pythonpath()})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _pythonpath() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME")}


def _summary(d: Path) -> dict:
    s = json.loads((d / "summary.json").read_text())
    s.pop("wall_s")
    return s


@pytest.mark.slow
def test_the_command_never_imports_dynamo_and_gives_the_same_results(tmp_path):
    lean = _child("lean", *_RUN, "--out", str(tmp_path / "lean"))
    full = _child("full", *_RUN, "--out", str(tmp_path / "full"))
    assert lean == {"rc": 0, "dynamo": "_StandIn"}   # counted FLOPs, built optimizers, stepped: no dynamo
    assert full == {"rc": 0, "dynamo": "module"}     # a library caller's torch is left as it is
    assert _summary(tmp_path / "lean") == _summary(tmp_path / "full")
    assert (tmp_path / "lean" / "rounds.csv").read_text() == (tmp_path / "full" / "rounds.csv").read_text()


_FALLTHROUGH = """
import sys, torch
from flexpl.io.lean import spare_dynamo
assert spare_dynamo()
assert not spare_dynamo()  # installed once
import torch._dynamo
assert torch._dynamo.disable(len) is len and torch._dynamo.is_compiling() is False
torch._dynamo.graph_break()
reset = torch._dynamo.reset        # anything else: the real module, imported now
assert type(sys.modules["torch._dynamo"]).__name__ == "module" and callable(reset)
import torch._dynamo as real
assert real is sys.modules["torch._dynamo"] and real.config is not None
f = torch.compile(lambda x: x + 1, backend="eager")
assert int(f(torch.tensor(1))) == 2  # a user's torch.compile still works in such a process
print("ok")
"""


@pytest.mark.slow
def test_anything_else_asked_of_the_stand_in_loads_the_real_dynamo():
    r = subprocess.run([sys.executable, "-c", _FALLTHROUGH], capture_output=True, text=True, timeout=300,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", **_pythonpath()})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
