"""CIFAR tarballs (search, download, checksums), lazy synthetic images, the image transform."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from flexpl.cli import main
from flexpl.data import cifar, clear_cache, load_data, load_dataset, partition, synthetic_dataset
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


def test_synthetic_is_deterministic_per_seed_and_lazy():
    a = synthetic_dataset((3, 224, 224), 1000, train=1_000_000, test=50, seed=3)
    b = synthetic_dataset((3, 224, 224), 1000, train=1_000_000, test=50, seed=3)
    c = synthetic_dataset((3, 224, 224), 1000, train=1_000_000, test=50, seed=4)
    assert a.train_x.shape == (1_000_000, 3, 224, 224) and a.input_shape == (3, 224, 224)
    assert torch.equal(a.train_y, b.train_y) and not torch.equal(a.train_y, c.train_y)
    assert int(a.train_y.max()) < 1000
    idx = np.array([999_999, 5, 5])
    assert torch.equal(a.train_x[idx], b.train_x[idx])
    assert torch.equal(a.train_x[idx][1], a.train_x[idx][2])  # a sample is the same on every read
    assert not torch.equal(a.train_x[5], c.train_x[5])
    assert not torch.equal(a.train_x[5], a.test_x[5])  # train and test draw from different streams
    assert a.train_x[3:5].shape == (2, 3, 224, 224)
    # a million samples: labels only (8 MB), no pixels
    assert a.train_y.numel() * a.train_y.element_size() == 8_000_000


def test_partitions_work_on_synthetic_data():
    d = synthetic_dataset((3, 8, 8), 10, train=2000, test=10, seed=0)
    parts = partition(d.train_y.numpy(), 5, "dirichlet", seed=0, alpha=0.5)
    assert sorted(np.concatenate(parts).tolist()) == list(range(2000))


def test_synthetic_from_a_scenario_and_refused_fields_elsewhere():
    scn = digits_star(["data.dataset=synthetic", "data.shape=[3,16,16]", "data.classes=7", "data.train=40",
                       "data.test=9"])
    d = load_data(scn.data, scn.seed)
    assert d.input_shape == (3, 16, 16) and d.num_classes == 7 and len(d.train_y) == 40 and len(d.test_y) == 9
    with pytest.raises(UserError, match="data.classes: only dataset synthetic"):
        load_data(digits_star(["data.classes=7"]).data)


def test_transform_resizes_and_repeats_channels():
    scn = digits_star(["data.transform={resize: 16, channels: 3}", "data.max_train=20"])
    d = load_data(scn.data)
    assert d.input_shape == (3, 16, 16) and d.test_x.shape[1:] == (3, 16, 16)
    assert torch.equal(d.train_x[:, 0], d.train_x[:, 2])
    plain = load_dataset("digits", max_train=20)
    # bilinear 8 -> 16 keeps the mean of each image to float round-off
    torch.testing.assert_close(d.train_x[:, 0].mean((1, 2)), plain.train_x[:, 0].mean((1, 2)), rtol=0, atol=0.05)


def test_a_resnet_trains_on_lazy_synthetic_data(tmp_path):
    scn = digits_star(["data.dataset=synthetic", "data.shape=[3,16,16]", "data.train=64", "data.test=16",
                       "model={name: resnet18, width: 0.0625, depth: 0.5}", "training.rounds=1"])
    from flexpl.sim.simulator import run

    s = run(scn).summary
    assert 0.0 <= s["final_accuracy"] <= 1.0 and s["bytes_total"] > 0


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


def test_fog_imagenet_is_resnet50_on_synthetic_imagenet_shapes():
    from flexpl.config.scenario import load_scenario

    scn = load_scenario("fog-imagenet", [], None, None)
    d = load_data(scn.data, scn.seed)
    assert d.input_shape == (3, 224, 224) and d.num_classes == 1000
    assert len(d.train_y) // len(scn.data_nodes) == 300
