"""The package's layers: every module imports alone, nothing below the CLI imports it, no import circle."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import flexpl

SRC = Path(flexpl.__file__).parent


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for p in sorted(SRC.rglob("*.py")):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (type-only imports never run)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Package modules ``name`` imports anywhere in its file (top level or inside a function).

    Imports under ``if TYPE_CHECKING:`` are left out: they never run, so they cannot close a circle.
    ``from a.b import c`` counts as importing ``a.b`` and, if it is a module, ``a.b.c``;
    a module named in a string passed to ``importlib.import_module`` counts too.
    """
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                base = ".".join(head + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(str(node.args[0].value))
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_walk_finds_the_package():
    assert {"flexpl.cli", "flexpl.dist.backend", "flexpl.sim.simulator", "flexpl.costs.trace",
            "flexpl.io.results", "flexpl.io.injected_faults", "flexpl.data.batching"} <= set(MODULES)
    # top-level, deferred and relative imports are all seen
    assert {"flexpl.studies.run_one", "flexpl.dist.backend", "flexpl.config.scenario"} <= GRAPH["flexpl.cli.run"]
    assert "flexpl.data.batching" in GRAPH["flexpl.sim.engine"]


def test_nothing_below_the_cli_imports_it():
    """engine/ and costs/ above all, but no module other than the CLI itself (the flexpl.cli package) imports it."""
    def in_cli(m: str) -> bool:
        return m == "flexpl.cli" or m.startswith("flexpl.cli.")

    importers = sorted(m for m, deps in GRAPH.items() if not in_cli(m) and any(in_cli(d) for d in deps))
    assert importers == [], f"these modules import flexpl.cli: {importers}"


def test_engine_and_costs_import_no_command_module():
    """The engine and the cost model sit below every command (run, sweep, tune, plan, report)."""
    commands = {"flexpl.cli", "flexpl.studies.sweep", "flexpl.studies.tune", "flexpl.planner", "flexpl.report.html", "flexpl.studies.run_one"}
    bad = {m: sorted(GRAPH[m] & commands) for m in GRAPH
           if m.startswith(("flexpl.engine", "flexpl.costs")) and GRAPH[m] & commands}
    assert bad == {}, bad


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        path.pop()
        state[u] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    """No circle, even through imports deferred into functions: each module's dependencies sit below it."""
    assert _cycle(GRAPH) is None


def _import_alone(name: str) -> tuple[str, int, str]:
    env = dict(os.environ, PYTHONWARNINGS="error::ImportWarning")
    proc = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True,
                          timeout=300)
    lines = proc.stderr.strip().splitlines()
    return name, proc.returncode, lines[-1] if lines else ""


def test_every_module_imports_alone_in_a_fresh_interpreter():
    """``python -c "import flexpl.X"`` succeeds for every module: no module depends on another being imported first."""
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        results = list(pool.map(_import_alone, sorted(MODULES)))
    failed = [(name, err) for name, code, err in results if code != 0]
    assert len(results) == len(MODULES) >= 40
    assert failed == [], failed


def test_the_launchers_worker_entry_needs_no_cli(monkeypatch, capsys):
    """``flexpl worker`` on its own parser (flexpl.cli.worker.worker_main; the launcher's workers call
    flexpl.dist.worker.launched_rank, no parser): argument and environment errors are one line, exit 2."""
    from flexpl.cli import worker as dist

    assert dist.worker_main(["--no-such-option"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flexpl: error: flexpl worker: unrecognized arguments"), err
    monkeypatch.delenv("RANK", raising=False)
    assert dist.worker_main(["digits-star"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["flexpl: error: worker: environment variable RANK is not set; start workers with torchrun "
                   "(see the README) or use flexpl run --backend dist"], err


def test_moved_helpers_answer_at_their_old_homes():
    """Other modules (and helpers) still import these from the engine."""
    from flexpl.data import batching
    from flexpl.sim import engine as core

    assert (core.batches, core.select_clients, core.mix_seed) == (batching.batches, batching.select_clients,
                                                                    batching.mix_seed)


def test_block_model_slice_is_a_copy_with_the_full_models_keys():
    import torch

    from flexpl.models import build_model
    from flexpl.sim.engine import stage_module

    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    part = model.slice(1, 3)
    assert part.block_names == model.block_names[1:3] == ["conv2", "fc1"]
    assert all(k.startswith(("blocks.conv2.", "blocks.fc1.")) for k in part.state_dict())
    full = model.state_dict()
    for k, v in part.state_dict().items():
        assert torch.equal(v, full[k]) and v.data_ptr() != full[k].data_ptr()  # the same values, its own copy
    assert stage_module(model, 1, 3).state_dict().keys() == part.state_dict().keys()


def test_topology_from_scenario_is_what_the_simulator_builds():
    from flexpl.config.scenario import load_scenario
    from flexpl.sim.simulator import build_topology
    from flexpl.system.topology import Topology

    scn = load_scenario("edge-fmnist", [], "fpl")
    topo, old = Topology.from_scenario(scn), build_topology(scn)
    assert topo.nodes == old.nodes and topo.links == old.links and topo.server == old.server
    assert [topo.route(n, topo.server) for n in scn.data_nodes] == [old.route(n, old.server) for n in scn.data_nodes]


def test_type_only_imports_are_not_edges(tmp_path: Path) -> None:
    """An ``if TYPE_CHECKING:`` import is not an edge of the graph; a deferred one is."""
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from flexpl.cli import main\n"
                 "def g():\n    from flexpl.io.console import fmt\n")
    assert _imports("flexpl.m", f) == {"flexpl.io.console"}
