"""The bad-input corpus (tests/integration/bad_inputs/*.yaml): each case exits 2 with one line naming the problem.

A case file holds ``expect`` (a fragment of the message) and one of: ``set`` (overrides
applied to digits-star), ``scenario`` (a whole scenario), ``text`` (raw YAML), ``args``
(a whole command line); ``fixture`` prepares files (a corrupted dataset, a truncated
checkpoint, an output path that is a file). Every case also checks that a result file
already in the output folder is left exactly as it was.
"""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import pytest
import yaml

from flexpl.cli import main
from flexpl.config.load import apply_set

CASES = sorted((Path(__file__).parent / "bad_inputs").glob("*.yaml"))


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30


def _scenario_file(tmp_path: Path, case: dict) -> str:
    if "text" in case:
        data_text = case["text"]
    else:
        if "scenario" in case:
            data = case["scenario"]
        else:
            data = yaml.safe_load(resources.files("flexpl.scenarios").joinpath("digits-star.yaml").read_text())
            for item in case.get("set", []):
                apply_set(data, item)
        data_text = yaml.safe_dump(data)
    p = tmp_path / "scenario.yaml"
    p.write_text(data_text)
    return str(p)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_input(path, tmp_path, capsys, monkeypatch):
    case = yaml.safe_load(path.read_text())
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "summary.json"
    keep.write_text('{"precious": true}\n')
    fixture = case.get("fixture")
    if fixture in ("missing_dataset", "corrupted_idx"):
        from flexpl.data import clear_cache, fashion_mnist

        data_dir = tmp_path / "data"
        data_dir.mkdir()
        monkeypatch.setenv("FLEXPL_DATA", str(data_dir))
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())
        clear_cache()
        if fixture == "corrupted_idx":
            for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                         "t10k-labels-idx1-ubyte"):
                with gzip.open(data_dir / f"{name}.gz", "wb") as f:
                    f.write(b"\x00\x00\x08\x03garbage")
    if "args" in case:
        argv = [*case["args"], "--out", str(out)]
    elif fixture == "out_is_file":
        argv = ["run", "digits-star", "--out", str(keep)]
    elif fixture in ("truncated_checkpoint", "no_checkpoint"):
        assert main(["run", "digits-star", "--set", "training.rounds=1", "--out", str(out), "--quiet"]) == 0
        keep.write_text('{"precious": true}\n')
        ck = out / "checkpoint.pt"
        if fixture == "truncated_checkpoint":
            ck.write_bytes(ck.read_bytes()[:100])
        else:
            ck.unlink()
        capsys.readouterr()
        argv = ["run", "--resume", str(out)]
    else:
        argv = ["run", _scenario_file(tmp_path, case), "--out", str(out)]
    code = main([*argv, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert case["expect"] in lines[0], lines[0]
    assert "Traceback" not in err
    assert keep.read_text() == '{"precious": true}\n'
