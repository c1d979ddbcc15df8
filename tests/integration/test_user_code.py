"""Code a scenario imports: listed before it runs, refused by --no-user-code, never imported by report,
only dotted names on sys.path, and checkpoints that refuse pickled objects."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from flexpl.cli import main

MOD = "flexpl_i28_probe"
SCENARIO = f"""name: probe
data: {{dataset: {{factory: "{MOD}:data", n: 10}}}}
model: {{factory: "{MOD}:build"}}
training: {{loss: "{MOD}:loss", aggregator: {{kind: "{MOD}:agg"}}}}
"""


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A module that must not be imported (importing it writes a marker file), on sys.path."""
    marker = tmp_path / "imported"
    (tmp_path / f"{MOD}.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                        "def build(**k): raise SystemExit('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(MOD, None)
    f = tmp_path / "probe.yaml"
    f.write_text(SCENARIO)
    yield f, marker
    sys.modules.pop(MOD, None)


def test_show_file_lists_every_import_without_importing(probe, capsys):
    f, marker = probe
    assert main(["scenarios", "--show", str(f)]) == 0
    out = capsys.readouterr().out
    for line in [f"data.dataset.factory: {MOD}:data", f"model.factory: {MOD}:build",
                 f"training.loss: {MOD}:loss", f"training.aggregator.kind: {MOD}:agg"]:
        assert f"#   {line}\n" in out
    assert not marker.exists()
    assert main(["scenarios", "--show", "digits-star"]) == 0
    assert capsys.readouterr().out.endswith("# user code this scenario imports: none\n")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_no_user_code_refuses_in_one_line_before_anything(probe, tmp_path, capsys, monkeypatch, how):
    f, marker = probe
    argv = ["run", str(f), "--out", str(tmp_path / "res")]
    if how == "flag":
        argv.append("--no-user-code")
    else:
        monkeypatch.setenv("FLEXPL_NO_USER_CODE", "1")
    assert main(argv) == 2
    cap = capsys.readouterr()
    assert len(cap.err.strip().splitlines()) == 1 and "refused because" in cap.err and MOD in cap.err
    assert f"imports user code: data.dataset.factory={MOD}:data" in cap.out  # listed at the start
    assert not marker.exists() and not (tmp_path / "res").exists()


@pytest.mark.parametrize("path", ["..evil:build", "/etc/passwd:x", "a/b:c", "os:system()"])
def test_an_import_path_is_dotted_names_only(tmp_path, capsys, path):
    f = tmp_path / "s.yaml"
    f.write_text(f'name: s\nmodel: {{factory: "{path}"}}\n')
    assert main(["plan", str(f), "--out", str(tmp_path / "p"), "--quiet"]) == 2  # a240843: '..evil' -> TypeError
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("flexpl: error: model.factory:"), err


def test_report_never_imports_user_code(probe, tmp_path, capsys):
    _, marker = probe
    out = tmp_path / "run"
    assert main(["run", "digits-star", "--out", str(out), "--quiet", "--set", "training.rounds=1",
                 "--set", "training.max_steps_per_round=2"]) == 0
    cfg = out / "config.yaml"
    cfg.write_text(cfg.read_text().replace("model:\n", f"model:\n  factory: {MOD}:build\n", 1))
    main(["report", str(out)])  # may warn about the edited config; it must not import it
    assert not marker.exists() and MOD not in sys.modules


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    quick = ["--quiet", "--set", "training.rounds=2", "--set", "training.max_steps_per_round=2"]
    assert main(["run", "digits-star", "--out", str(out), *quick]) == 0
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    blob = torch.load(out / "checkpoint.pt", weights_only=True)
    blob["engine"] = Evil()
    torch.save(blob, out / "checkpoint.pt")
    assert main(["run", "digits-star", "--resume", str(out), *quick]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupted or not a FlexPL checkpoint" in err, err
    assert not marker.exists()


def _marker_module(folder: Path, name: str, marker: Path, body: str = "") -> None:
    """A module whose import writes ``marker`` (what must not happen where it is checked)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n{body}")


def test_a_sweep_over_finished_cells_never_imports_user_code(tmp_path, monkeypatch):
    """The rerun of a finished sweep reads digests and summaries only (7ac78af imported the loss module
    while checking the cells)."""
    mod, marker = "flexpl_i28_loss", tmp_path / "imported"
    _marker_module(tmp_path / "code", mod, marker, "import torch.nn.functional as F\n"
                   "def loss(logits, y):\n    return F.cross_entropy(logits, y)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    argv = ["sweep", "digits-star", "--set", f"training.loss={mod}:loss", "--set", "training.rounds=1",
            "--set", "training.max_steps_per_round=2", "--grid", "strategy=fl", "--out", str(tmp_path / "sw"),
            "--quiet"]
    try:
        assert main(argv) == 0 and marker.exists()  # the cell ran with the user's loss
        marker.unlink()
        sys.modules.pop(mod, None)
        assert main(argv) == 0  # every cell finished: nothing to run, nothing to import
        assert not marker.exists() and mod not in sys.modules
        assert (tmp_path / "sw" / "sweep.csv").read_text().count("\n") == 2  # and the row is still there
    finally:
        sys.modules.pop(mod, None)


def test_plan_on_a_results_folder_never_imports_user_code(probe, tmp_path, capsys):
    _, marker = probe
    out = tmp_path / "run"
    assert main(["run", "digits-star", "--out", str(out), "--quiet", "--set", "training.rounds=1",
                 "--set", "training.max_steps_per_round=2"]) == 0
    cfg = out / "config.yaml"
    cfg.write_text(cfg.read_text().replace("model:\n", f"model:\n  factory: {MOD}:build\n", 1))
    capsys.readouterr()
    assert main(["plan", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a folder" in err, err
    assert not marker.exists() and MOD not in sys.modules


def test_an_import_path_reaches_sys_path_and_the_scenarios_folder_only(tmp_path, monkeypatch, capsys):
    """A module in the current folder (7ac78af's fallback) is refused; one beside the scenario file is found."""
    from flexpl.config.scenario import load_scenario
    from flexpl.io.results import write_yaml

    far, near = "flexpl_i28_far", "flexpl_i28_near"
    far_marker, near_marker = tmp_path / "far-imported", tmp_path / "near-imported"
    build = "def build(**kw):\n    import torch\n    return torch.nn.Sequential(torch.nn.Linear(64, 10))\n"
    _marker_module(tmp_path / "elsewhere", far, far_marker, build)
    _marker_module(tmp_path / "scn", near, near_marker, build)
    monkeypatch.chdir(tmp_path / "elsewhere")  # the module exists only here: not on sys.path, not beside the file
    path = tmp_path / "scn" / "s.yaml"
    data = load_scenario("digits-star").resolved()

    def name(module: str) -> None:
        write_yaml(path, dict(data, model={"factory": f"{module}:build"}))
    name(far)
    saved = list(sys.path)
    try:
        assert main(["plan", str(path), "--out", str(tmp_path / "p"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(
            f"flexpl: error: model.factory: cannot import '{far}' from sys.path or the scenario's folder"), err
        assert not far_marker.exists() and far not in sys.modules
        name(near)
        assert load_scenario(str(path)).model["factory"] == f"{near}:build"
        assert near_marker.exists()  # found beside the scenario file
    finally:
        sys.path[:] = saved
        for m in (far, near):
            sys.modules.pop(m, None)
