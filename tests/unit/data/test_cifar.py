"""CIFAR tarballs (search, download, checksums) and fog-cifar's data: CIFAR-10 where present, else its fallback."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from flexpl.cli import main
from flexpl.data import cifar, clear_cache, load_data, load_dataset, partition
from flexpl.errors import UserError
from tests.conftest import digits_star


def _write_tarball(path: Path, name: str, n_train: int = 10, n_test: int = 6) -> Path:
    """A small CIFAR python tarball with the official layout; pixels and labels from a seeded RNG."""
    spec = cifar.SPECS[name]
    rng = np.random.default_rng(0)
    members = {m: n_train // len(spec.train) for m in spec.train} | {spec.test: n_test}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for m, n in members.items():
            d = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 spec.label_key: [int(v) for v in rng.integers(0, spec.num_classes, size=n)]}
            raw = pickle.dumps(d)
            info = tarfile.TarInfo(f"{spec.folder}/{m}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def _pin(monkeypatch, name: str, path: Path) -> None:
    """Make ``path`` the official tarball (its size and SHA-256)."""
    spec = cifar.SPECS[name]
    data = path.read_bytes()
    monkeypatch.setitem(cifar.SPECS, name, replace(spec, size=len(data), sha256=hashlib.sha256(data).hexdigest()))


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("FLEXPL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(cifar, "BASE_URL", (tmp_path / "no-mirror").as_uri())
    clear_cache()
    yield
    clear_cache()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loads_a_written_tarball_from_flexpl_data(isolated, monkeypatch, tmp_path, name):
    tar = _write_tarball(tmp_path / "data" / name / cifar.SPECS[name].archive, name)
    _pin(monkeypatch, name, tar)
    monkeypatch.setenv("FLEXPL_DATA", str(tmp_path / "data"))
    d = load_dataset(name)
    assert d.train_x.shape == (10, 3, 32, 32) and d.test_x.shape == (6, 3, 32, 32)
    assert d.num_classes == cifar.SPECS[name].num_classes
    # pixel (0,0,0,0) of the first training image, normalized with the channel mean/std
    with tarfile.open(tar) as t:
        first = pickle.load(t.extractfile(f"{cifar.SPECS[name].folder}/{cifar.SPECS[name].train[0]}"),
                            encoding="bytes")
    spec = cifar.SPECS[name]
    want = (first[b"data"][0, 0] / 255.0 - spec.mean[0]) / spec.std[0]
    assert float(d.train_x[0, 0, 0, 0]) == pytest.approx(want, rel=1e-5)
    assert d.train_y[0] == first[spec.label_key][0]
    parts = partition(d.train_y.numpy(), 2, "iid", seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))


def test_cifar_download_lands_in_the_cache_after_the_checksum(isolated, monkeypatch, tmp_path):
    mirror = _write_tarball(tmp_path / "mirror" / "cifar-10-python.tar.gz", "cifar10")
    _pin(monkeypatch, "cifar10", mirror)
    monkeypatch.setattr(cifar, "BASE_URL", mirror.parent.as_uri())
    d = load_dataset("cifar10")
    assert len(d.train_y) == 10
    assert (tmp_path / "xdg" / "flexpl" / "cifar10" / "cifar-10-python.tar.gz").is_file()


def test_cifar_download_with_a_wrong_checksum_is_refused_and_not_kept(isolated, monkeypatch, tmp_path):
    mirror = _write_tarball(tmp_path / "mirror" / "cifar-10-python.tar.gz", "cifar10")
    _pin(monkeypatch, "cifar10", mirror)
    monkeypatch.setitem(cifar.SPECS, "cifar10", replace(cifar.SPECS["cifar10"], sha256="0" * 64))
    monkeypatch.setattr(cifar, "BASE_URL", mirror.parent.as_uri())
    with pytest.raises(UserError, match="checksum mismatch"):
        load_dataset("cifar10")
    assert not any((tmp_path / "xdg" / "flexpl" / "cifar10").iterdir())


def test_missing_cifar_names_the_places_and_the_fix(isolated):
    with pytest.raises(UserError, match="not found in .* set FLEXPL_DATA"):
        load_dataset("cifar100")


@pytest.mark.parametrize(("damage", "expect"), [("truncate", "truncated"), ("flip", "checksum mismatch")])
def test_damaged_cifar_tarball_exits_2_with_one_line(isolated, monkeypatch, tmp_path, capsys, damage, expect):
    tar = _write_tarball(tmp_path / "data" / "cifar-10-python.tar.gz", "cifar10")
    _pin(monkeypatch, "cifar10", tar)
    raw = tar.read_bytes()
    tar.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else raw[:-1] + bytes([raw[-1] ^ 1]))
    monkeypatch.setenv("FLEXPL_DATA", str(tmp_path / "data"))
    scn = digits_star(["data.dataset=cifar10", "training.rounds=1"]).model_dump(mode="json")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scn))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and str(tar) in err and len(err.splitlines()) == 1


def test_fog_cifar_falls_back_to_fashion_mnist_as_3x32x32(isolated, capsys):
    from flexpl.config.scenario import load_scenario

    scn = load_scenario("fog-cifar", ["data.max_train=100", "data.max_test=10"], None, None)
    assert scn.model == {"name": "resnet18"} and len(scn.data_nodes) == 20
    d = load_data(scn.data, scn.seed)
    assert d.name == "fashion-mnist" and d.input_shape == (3, 32, 32) and len(d.train_y) == 100
    assert "using fashion-mnist (data.fallback)" in capsys.readouterr().err


def test_fog_cifar_uses_cifar10_where_present(isolated, monkeypatch, tmp_path):
    from flexpl.config.scenario import load_scenario

    tar = _write_tarball(tmp_path / "data" / "cifar-10-python.tar.gz", "cifar10")
    _pin(monkeypatch, "cifar10", tar)
    monkeypatch.setenv("FLEXPL_DATA", str(tmp_path / "data"))
    d = load_data(load_scenario("fog-cifar", [], None, None).data)
    assert d.name == "cifar10" and d.input_shape == (3, 32, 32)
