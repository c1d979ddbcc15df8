"""Tests for flexpl.data: IDX parsing, local search, checksummed download, digits and load_dataset."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from flexpl.data import Dataset, clear_cache, load_dataset
from flexpl.data import fashion_mnist as fm
from flexpl.errors import UserError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
N_TRAIN, N_TEST = 30, 12


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """Encode a uint8 array as an IDX file."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Small random Fashion-MNIST-like arrays keyed by IDX file stem."""
    rng = np.random.default_rng(seed)
    return {
        fm.TRAIN_IMAGES: rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        fm.TRAIN_LABELS: np.arange(N_TRAIN, dtype=np.uint8) % 10,
        fm.TEST_IMAGES: rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        fm.TEST_LABELS: (np.arange(N_TEST, dtype=np.uint8) * 3) % 10,
    }


def write_idx_files(folder: Path, *, compress: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the four IDX files into ``folder``; return the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = fake_arrays(seed)
    for stem, array in arrays.items():
        magic = fm.IMAGES_MAGIC if array.ndim == 3 else fm.LABELS_MAGIC
        raw = idx_bytes(array, magic)
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return arrays


def decompressed_sha256(folder: Path) -> dict[str, str]:
    """SHA-256 of each decompressed ``.gz`` IDX file in ``folder``."""
    return {
        stem: hashlib.sha256(gzip.decompress((folder / f"{stem}.gz").read_bytes())).hexdigest()
        for stem in fm.FILES
    }


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Point every data location at tmp_path and make any download attempt fail offline."""
    monkeypatch.delenv("FLEXPL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(fm, "BASE_URLS", ((tmp_path / "no-such-mirror").as_uri(),))
    clear_cache()
    yield
    clear_cache()


# ---------------------------------------------------------------- fashion-mnist parsing


def test_loads_small_gzip_idx_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    arrays = write_idx_files(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("FLEXPL_DATA", str(tmp_path / "data"))
    ds = load_dataset("fashion-mnist")
    assert isinstance(ds, Dataset)
    assert ds.name == "fashion-mnist" and ds.num_classes == 10
    assert ds.input_shape == (1, 28, 28)
    assert ds.train_x.shape == (N_TRAIN, 1, 28, 28) and ds.test_x.shape == (N_TEST, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.test_y.tolist() == arrays[fm.TEST_LABELS].tolist()
    assert ds.train_y.tolist() == arrays[fm.TRAIN_LABELS].tolist()
    expected = (arrays[fm.TRAIN_IMAGES][0].astype(np.float32) / 255 - 0.2860) / 0.3530
    np.testing.assert_allclose(ds.train_x[0, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    small = load_dataset("fashion-mnist", max_train=7, max_test=3)
    assert small.train_x.shape[0] == 7 and small.test_y.shape[0] == 3
    assert torch.equal(small.train_x, ds.train_x[:7])


def test_loads_uncompressed_files_directly_in_flexpl_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    arrays = write_idx_files(tmp_path / "raw", compress=False)
    monkeypatch.setenv("FLEXPL_DATA", str(tmp_path / "raw"))
    assert fm.find_dir() == tmp_path / "raw"
    tx, ty, vx, vy = fm.load()
    assert tx.shape == (N_TRAIN, 1, 28, 28) and tx.dtype == np.float32
    assert vy.dtype == np.int64 and vy.tolist() == arrays[fm.TEST_LABELS].tolist()


def test_search_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEXPL_DATA", str(tmp_path / "env"))
    dirs = fm.search_dirs()
    assert dirs[:3] == [
        tmp_path / "env",
        tmp_path / "env" / "fashion-mnist",
        tmp_path / "xdg-cache" / "flexpl" / "fashion-mnist",
    ]
    assert dirs[-1] == DEBIAN_DIR
    write_idx_files(fm.cache_dir())
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    assert fm.find_dir() == fm.cache_dir()


@pytest.mark.parametrize("stem", [fm.TRAIN_IMAGES, fm.TEST_LABELS])
def test_truncated_file_raises_with_path(tmp_path: Path, stem: str) -> None:
    write_idx_files(tmp_path)
    path = tmp_path / f"{stem}.gz"
    path.write_bytes(path.read_bytes()[:-20])  # truncated gzip stream
    with pytest.raises(UserError, match="corrupted") as err:
        fm.load_raw(tmp_path)
    assert str(path) in str(err.value)


def test_truncated_raw_file_raises_with_path(tmp_path: Path) -> None:
    write_idx_files(tmp_path, compress=False)
    path = tmp_path / fm.TRAIN_IMAGES
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="corrupted") as err:
        fm.load_raw(tmp_path)
    assert str(path) in str(err.value) and "delete" in str(err.value)


def test_wrong_magic_raises_with_path(tmp_path: Path) -> None:
    write_idx_files(tmp_path)
    path = tmp_path / f"{fm.TRAIN_LABELS}.gz"
    labels = fake_arrays()[fm.TRAIN_LABELS]
    path.write_bytes(gzip.compress(idx_bytes(labels, 2050)))
    with pytest.raises(UserError, match="magic number 2050") as err:
        fm.load_raw(tmp_path)
    assert str(path) in str(err.value)


def test_label_count_mismatch_raises(tmp_path: Path) -> None:
    write_idx_files(tmp_path)
    path = tmp_path / f"{fm.TEST_LABELS}.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(N_TEST + 1, np.uint8), fm.LABELS_MAGIC)))
    with pytest.raises(UserError, match=str(N_TEST + 1)):
        fm.load_raw(tmp_path)


# ---------------------------------------------------------------- download


def test_download_checksum_mismatch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    write_idx_files(mirror)
    bad = dict(decompressed_sha256(mirror), **{fm.TRAIN_LABELS: "0" * 64})
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    with pytest.raises(UserError, match="checksum mismatch") as err:
        fm.locate(base_url=mirror.as_uri(), checksums=bad)
    msg = str(err.value)
    assert (
        "not found" in msg
        and "FLEXPL_DATA" in msg
        and "apt-get install dataset-fashion-mnist" in msg
    )
    assert str(fm.cache_dir()) in msg
    cached = fm.cache_dir()
    assert not (cached / f"{fm.TRAIN_LABELS}.gz").exists()
    assert not [p for p in cached.iterdir() if p.name.endswith(".tmp")]


def test_download_lands_in_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    arrays = write_idx_files(mirror)
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    monkeypatch.setattr(fm, "SHA256", decompressed_sha256(mirror))
    monkeypatch.setattr(fm, "BASE_URLS", ((tmp_path / "dead").as_uri(), mirror.as_uri()))
    ds = load_dataset("fashion-mnist")
    cached = tmp_path / "xdg-cache" / "flexpl" / "fashion-mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(f"{s}.gz" for s in fm.FILES)
    assert ds.train_y.tolist() == arrays[fm.TRAIN_LABELS].tolist()
    assert fm.find_dir() == cached


def test_download_failure_lists_places(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fm, "SYSTEM_DIRS", (tmp_path / "system",))
    monkeypatch.setenv("FLEXPL_DATA", str(tmp_path / "env"))
    with pytest.raises(UserError) as err:
        load_dataset("fashion-mnist")
    msg = str(err.value)
    for place in (tmp_path / "env", fm.cache_dir(), tmp_path / "system"):
        assert str(place) in msg
    assert "download failed" in msg and "\n" not in msg


def test_debian_checksums_match_table() -> None:
    assert set(fm.SHA256) == set(fm.FILES)
    if not DEBIAN_DIR.is_dir():
        pytest.skip(f"{DEBIAN_DIR} absent (apt-get install dataset-fashion-mnist)")
    for stem in (fm.TRAIN_LABELS, fm.TEST_LABELS):  # the small files; images are checked by load
        assert fm._sha256_of_decompressed(DEBIAN_DIR / f"{stem}.gz") == fm.SHA256[stem]


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason=f"{DEBIAN_DIR} absent")
def test_debian_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fm.find_dir() == DEBIAN_DIR
    ds = load_dataset("fashion-mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.train_y.numpy(), minlength=10).tolist() == [6000] * 10
    assert np.bincount(ds.test_y.numpy(), minlength=10).tolist() == [1000] * 10
    assert abs(float(ds.train_x.mean())) < 0.01 and abs(float(ds.train_x.std()) - 1) < 0.01


# ---------------------------------------------------------------- digits and load_dataset


def test_digits_shapes_and_determinism() -> None:
    ds = load_dataset("digits")
    assert ds.train_x.shape == (1500, 1, 8, 8) and ds.test_x.shape == (297, 1, 8, 8)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert ds.train_x.dtype == torch.float32 and ds.test_y.dtype == torch.int64
    assert abs(float(ds.train_x.mean())) < 1e-4 and abs(float(ds.train_x.std()) - 1) < 1e-3
    clear_cache()
    again = load_dataset("digits")
    assert again is not ds
    assert torch.equal(ds.train_x, again.train_x) and torch.equal(ds.test_y, again.test_y)
    small = load_dataset("digits", max_train=100, max_test=20)
    assert small.train_x.shape[0] == 100 and small.test_x.shape[0] == 20
    assert torch.equal(small.train_y, ds.train_y[:100])


def test_load_dataset_errors() -> None:
    with pytest.raises(UserError, match=r"data\.dataset.*fashion-mnist, digits"):
        load_dataset("imagenet")
    with pytest.raises(UserError, match=r"data\.max_train"):
        load_dataset("digits", max_train=0)
