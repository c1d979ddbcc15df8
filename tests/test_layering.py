"""The package's layers: one order of packages from bottom to top, no import upward, no private name
across packages, no import circle, and every module imports alone.

A *package* is the first name under ``flexpl`` (``flexpl.sim.exec.executor`` is in ``sim``;
``flexpl.errors`` is its own; ``flexpl`` itself, the lazy public API of ``flexpl/__init__.py``,
is ``flexpl``). Every module of a package is checked by its package, so modules added under
``cli/``, ``studies/`` or anywhere else are covered without naming them here.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import flexpl

SRC = Path(flexpl.__file__).parent

# Bottom to top. A package imports only packages on lower levels; packages on one level do
# not import each other. (``scenarios`` holds the built-in scenario files; ``version`` the
# version string; ``flexpl`` is the package's own ``__init__``, its lazy public API.)
LAYERS: list[set[str]] = [
    {"errors", "version", "scenarios"},
    {"io"},
    {"data", "models"},
    {"config"},
    {"system"},
    {"costs"},
    {"plan"},
    {"sim"},
    {"dist", "planner"},
    {"studies"},
    {"report"},
    {"api"},
    {"flexpl"},
    {"cli"},
]
LEVEL = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}

# Upward imports allowed by name, each one (importer, imported) pair of modules with the reason;
# none today (the last ones went when the commands' code moved under cli/). Keep it empty.
UPWARD_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for p in sorted(src.rglob("*.py")):
        parts = list(p.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def package(module: str) -> str:
    """The package a module belongs to: the first name under ``flexpl`` (``flexpl`` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(name: str, path: Path, modules: dict[str, Path] = MODULES) -> dict[str, set[str]]:
    """Package modules ``name`` imports anywhere in its file, each with the names it takes from it.

    Every import counts: at the top, inside functions, under ``if TYPE_CHECKING:``, relative.
    ``from a.b import c`` imports ``a.b`` (taking ``c``) and, if it is a module, ``a.b.c``.
    A dotted module name in a string counts too: ``importlib.import_module("flexpl.x")``, the
    lazy API's table in ``flexpl/__init__.py``, the CLI's table of command modules.
    """
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                found.setdefault(a.name, set())
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                base = ".".join(head + ([node.module] if node.module else []))
            for a in node.names:
                if f"{base}.{a.name}" in modules:
                    found.setdefault(f"{base}.{a.name}", set())
                else:
                    found.setdefault(base, set()).add(a.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
            found.setdefault(node.value, set())
    return {m: names for m, names in found.items() if m in modules and m != name}


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}
GRAPH = {name: set(deps) for name, deps in IMPORTS.items()}


def upward_imports(imports: dict[str, dict[str, set[str]]]) -> list[str]:
    """Every import of a package on the same or a higher level, as ``importer -> imported (packages)``."""
    bad = []
    for m, deps in sorted(imports.items()):
        for d in sorted(deps):
            a, b = package(m), package(d)
            if a != b and LEVEL[b] >= LEVEL[a] and (m, d) not in UPWARD_EXCEPTIONS:
                bad.append(f"{m} -> {d} ({a} on level {LEVEL[a]} imports {b} on level {LEVEL[b]})")
    return bad


def private_imports(imports: dict[str, dict[str, set[str]]]) -> list[str]:
    """Every ``_name`` (not ``__dunder__``) a module takes from a module of another package."""
    return [f"{m} <- {d}.{n}" for m, deps in sorted(imports.items()) for d, names in sorted(deps.items())
            for n in sorted(names)
            if n.startswith("_") and not n.startswith("__") and package(m) != package(d)]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph.get(u, ())):
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


def test_the_walk_finds_the_package():
    assert {"flexpl", "flexpl.cli", "flexpl.dist.worker", "flexpl.sim.simulator", "flexpl.costs.trace",
            "flexpl.io.results", "flexpl.io.injected_faults", "flexpl.data.batching"} <= set(MODULES)
    # top-level, deferred, type-only and string-named imports are all seen
    assert {"flexpl.studies.run_one", "flexpl.config.scenario"} <= GRAPH["flexpl.cli.run"]
    assert "flexpl.dist.worker" in GRAPH["flexpl.cli.worker"]
    assert "flexpl.data.batching" in GRAPH["flexpl.planner.predict"]
    assert {"flexpl.api", "flexpl.models.aggregate"} <= GRAPH["flexpl"]


def test_the_walk_sees_every_kind_of_import(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nimport importlib\nif TYPE_CHECKING:\n    from flexpl.cli import main\n"
                 "def g():\n    from flexpl.io.console import fmt, _private\n"
                 "    importlib.import_module('flexpl.report.html')\n")
    assert _imports("flexpl.m", f) == {"flexpl.cli": {"main"}, "flexpl.io.console": {"fmt", "_private"},
                                       "flexpl.report.html": set()}


def test_every_package_has_a_level():
    """A new package is placed in LAYERS on purpose (this test then checks it like the others)."""
    missing = sorted({package(m) for m in MODULES} - set(LEVEL))
    assert missing == [], f"add these packages to LAYERS in {__file__}: {missing}"


def test_no_package_imports_one_above_it():
    """Bottom to top, as LAYERS lists them: every import goes down a level or more, or stays in its package."""
    bad = upward_imports(IMPORTS)
    assert bad == [], "imports that go up (or sideways) the layers:\n" + "\n".join(bad)


def test_the_exceptions_still_exist():
    """An exception whose import is gone is deleted from UPWARD_EXCEPTIONS, so that the list only shrinks."""
    stale = [f"{m} -> {d}" for m, d in UPWARD_EXCEPTIONS if d not in GRAPH.get(m, ())]
    assert stale == [], f"remove these from UPWARD_EXCEPTIONS in {__file__}: {stale}"


def test_no_private_name_crosses_a_package():
    """A ``_name`` is its package's business: another package imports public names only."""
    bad = private_imports(IMPORTS)
    assert bad == [], "private names imported from another package:\n" + "\n".join(bad)


def test_the_checks_catch_a_planted_upward_import_and_private_name():
    planted = {**IMPORTS, "flexpl.io.console": {**IMPORTS["flexpl.io.console"], "flexpl.sim.engine": {"Engine"}},
               "flexpl.report.runs": {**IMPORTS["flexpl.report.runs"], "flexpl.costs.targets": {"_hidden"}}}
    assert upward_imports(planted) == ["flexpl.io.console -> flexpl.sim.engine (io on level 1 imports sim on level 7)"]
    assert private_imports(planted) == ["flexpl.report.runs <- flexpl.costs.targets._hidden"]


def test_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    """No circle between modules, even through imports deferred into functions or made for types only."""
    assert _cycle(GRAPH) is None


# One interpreter per share of the modules imports torch, numpy, pydantic and yaml once (third-party,
# seconds each; no flexpl module), then forks a fresh child per module that imports it alone: every
# flexpl module still starts from none of flexpl imported, as ``python -c "import flexpl.X"`` would.
_FORK_IMPORTER = r"""
import json, os, sys, warnings
import numpy, pydantic, torch, yaml  # noqa: F401  (third-party, slow to import; never flexpl)
assert not any(m == "flexpl" or m.startswith("flexpl.") for m in sys.modules)
out = []
for name in json.loads(sys.argv[1]):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        warnings.simplefilter("error", ImportWarning)
        try:
            __import__(name)
            code, msg = 0, ""
        except BaseException as exc:
            code, msg = 1, f"{type(exc).__name__}: {exc}"
        os.write(w, msg.encode()[:4000])
        os._exit(code)
    os.close(w)
    msg = b""
    while chunk := os.read(r, 4096):
        msg += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    out.append([name, os.waitstatus_to_exitcode(status), msg.decode(errors="replace")])
print(json.dumps(out))
"""


def _import_alone(names: list[str]) -> list[tuple[str, int, str]]:
    import json

    proc = subprocess.run([sys.executable, "-c", _FORK_IMPORTER, json.dumps(names)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


def test_every_module_imports_alone_in_a_fresh_interpreter():
    """Every module imports with no other flexpl module imported first (one fresh child per module)."""
    names = sorted(MODULES)
    shares = [names[i::2] for i in range(2)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = [r for part in pool.map(_import_alone, shares) for r in part]
    failed = [(name, err) for name, code, err in results if code != 0]
    assert len(results) == len(MODULES) >= 40
    assert failed == [], failed


def test_the_import_check_catches_a_module_that_needs_another_first(tmp_path, monkeypatch):
    """The forked check fails a module that only works when another was imported before it."""
    pkg = tmp_path / "needsfirst"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import needsfirst\nX = needsfirst.b.Y\n")
    (pkg / "b.py").write_text("Y = 1\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    results = dict((n, (c, e)) for n, c, e in _import_alone(["needsfirst.a", "needsfirst.b"]))
    assert results["needsfirst.b"][0] == 0
    assert results["needsfirst.a"][0] != 0 and "AttributeError" in results["needsfirst.a"][1]


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


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_packages_on_one_level_do_not_import_each_other(layer):
    """Listed on one level because neither needs the other (checked, not assumed)."""
    pkgs = LAYERS[layer]
    among = sorted(f"{m} -> {d}" for m, deps in IMPORTS.items() for d in deps
                   if package(m) in pkgs and package(d) in pkgs and package(m) != package(d))
    assert among == []


def test_the_command_line_parser_imports_no_heavy_package():
    """``flexpl --help`` builds every command's parser without torch, numpy, matplotlib, ray or mlflow
    (each command imports them in its ``main``; ``flexpl.planner`` resolves its names on first use)."""
    code = ("import sys; from flexpl.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'numpy', 'matplotlib', 'ray', 'mlflow', 'pandas') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_the_planners_lazy_names_all_resolve():
    """Every name ``flexpl.planner`` exports is one it can import, and every lazy name is exported."""
    import importlib
    import inspect

    import flexpl.planner as planner

    assert set(planner._WHERE) <= set(planner.__all__)
    for mod in ("choose", "walk", "predict", "search"):  # a submodule imported first never shadows a name
        importlib.import_module(f"flexpl.planner.{mod}")
    values = {n: getattr(planner, n, None) for n in planner.__all__}
    assert [n for n, v in values.items() if v is None or inspect.ismodule(v)] == []
    assert callable(planner.choose) and planner.choose.__module__ == "flexpl.planner.choose"
