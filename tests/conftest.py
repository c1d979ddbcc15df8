"""Shared helpers (small scenarios built from the built-in digits-star), autouse fixtures, and the marker
``integration`` for every test under tests/integration/."""

from __future__ import annotations

import contextlib
import copy
import os
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from flexpl.config.load import apply_set
from flexpl.config.scenario import Scenario, validate_scenario

# One thread: these tiny models run several times faster single-threaded on a busy 2-core
# machine, and results do not depend on who else is running.
torch.set_num_threads(1)

# Every Ray the tests start (local ones for sweeps, a 2-node cluster for the ray executor) runs on
# loopback without token authentication. Ray 2.60 turns tokens on where ~/.ray/auth_token exists and
# fixes a process's choice at its first ray.init: a test process that had started a local Ray with
# tokens then refused the cluster's calls ("Missing authorization header"), and the cluster dropped
# that driver's actors (the ray executor's tests failed after test_ray.py's, never alone).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


# A line Ray's log monitor forwards to a connected driver: "(pid=gcs_server) ...", "(raylet) ...",
# "(MyActor pid=123) ...", optionally in colour. Ray's background thread prints them to sys.stderr at
# any moment, so they are not the flexpl command's output that a test reads.
RAY_FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)?\((pid=|raylet|gcs_server|autoscaler|[A-Za-z_.]+ pid=)")


def flexpl_err(capsys: Any) -> str:
    """What the command under test wrote to stderr, without lines Ray forwarded from its own processes."""
    err = capsys.readouterr().err
    return "\n".join(line for line in err.splitlines() if not RAY_FORWARDED.match(line)).strip()


@contextlib.contextmanager
def saved_storages(module: torch.nn.Module) -> Iterator[dict[int, int]]:
    """Record the distinct storages autograd saves for backward (pointer -> bytes), parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def digits_star(sets: list[str] | None = None, **top: Any) -> Scenario:
    """digits-star with ``--set`` style overrides and top-level fields replaced."""
    data = yaml.safe_load(resources.files("flexpl.scenarios").joinpath("digits-star.yaml").read_text())
    data.update(copy.deepcopy(top))
    for s in sets or []:
        apply_set(data, s)
    return validate_scenario(data)


def digits_edges(sets: list[str] | None = None, **top: Any) -> Scenario:
    """digits-star's data, model and devices behind two edge servers (two each) and a cloud: ``fpl``
    gets one trunk per edge, averaged at the cloud."""
    data = yaml.safe_load(resources.files("flexpl.scenarios").joinpath("digits-star.yaml").read_text())
    data.update({"name": "digits-edges", "server": "cloud",
                 "nodes": [{"name": "cloud", "profile": "cloud-server"}, {"name": "edge0", "profile": "edge-server"},
                           {"name": "edge1", "profile": "edge-server"}] + data["nodes"][1:],
                 "links": [{"between": ["dev0", "edge0"], "profile": "wifi"},
                           {"between": ["dev1", "edge0"], "profile": "lte"},
                           {"between": ["dev2", "edge1"], "profile": "wifi"},
                           {"between": ["dev3", "edge1"], "profile": "ethernet"},
                           {"between": ["edge0", "cloud"], "profile": "fiber"},
                           {"between": ["edge1", "cloud"], "profile": "fiber"}]})
    data.update(copy.deepcopy(top))
    for s in sets or []:
        apply_set(data, s)
    return validate_scenario(data)


def chain_scenario(sets: list[str] | None = None, n_dev: int = 2, **top: Any) -> Scenario:
    """Devices -> edge -> cloud (multi-hop), digits data, small MLP."""
    data: dict[str, Any] = {
        "name": "chain", "seed": 0, "data": {"dataset": "digits", "partition": {"kind": "iid"}},
        "model": {"name": "mlp", "hidden": [64, 32]},
        "training": {"rounds": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05}},
        "server": "cloud",
        "nodes": [{"name": "cloud", "profile": "cloud-server"}, {"name": "edge", "profile": "edge-server"}]
        + [{"name": f"dev{i}", "profile": "rpi4", "holds_data": True} for i in range(n_dev)],
        "links": [{"between": [f"dev{i}", "edge"], "profile": "wifi"} for i in range(n_dev)]
        + [{"between": ["edge", "cloud"], "profile": "fiber"}],
        "strategy": "fl",
    }
    data.update(copy.deepcopy(top))
    for s in sets or []:
        apply_set(data, s)
    return validate_scenario(data)


@pytest.fixture(autouse=True)
def _cpu_unless_marked_cuda(request, monkeypatch):
    """On a machine with a GPU, every test not marked ``cuda`` runs as on one without (``engine.device: auto``
    is the CPU, here and in the processes it starts): the suite compares CPU executors bit for bit, and the
    tests marked ``cuda`` are the GPU's. Nothing changes where torch sees no GPU."""
    if request.node.get_closest_marker("cuda") is None and torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """No test may reach the internet: downloads point at a path that does not exist."""
    try:
        from flexpl.data import fashion_mnist
    except ImportError:
        return
    monkeypatch.setattr(fashion_mnist, "BASE_URLS", ["file:///nonexistent-flexpl-test"], raising=False)
    from flexpl.data import cifar

    monkeypatch.setattr(cifar, "BASE_URL", "file:///nonexistent-flexpl-test")


INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/integration/ (whole runs) carry the marker ``integration``, so that
    ``pytest -m "not integration"`` runs the unit set. Markers select; they skip nothing."""
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def flexpl_forks():
    """``flexpl`` commands forked from one server that imported the package once (tests/forkserver.py), one
    torch thread: ``flexpl_forks.completed(argv, env={...})`` is ``subprocess.run([flexpl, *argv], env=dict(
    os.environ, OMP_NUM_THREADS="1", ...), capture_output=True, text=True)`` without importing torch again."""
    from tests.forkserver import ForkServer

    server = ForkServer()
    yield server
    server.close()
