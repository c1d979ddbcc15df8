"""CIFAR-10 and CIFAR-100 from the python-pickle tarballs (Krizhevsky, "Learning Multiple Layers
of Features from Tiny Images", tech. report, U. Toronto 2009).

Search order for the tarball (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``):

1. ``$FLEXPL_DATA`` (the tarball directly in it, or in a ``cifar10`` / ``cifar100`` subfolder);
2. the user cache folder ``$XDG_CACHE_HOME/flexpl/<name>`` (default ``~/.cache/flexpl/<name>``).

When neither holds it, it is downloaded into the user cache. A tarball is used only when
its size and SHA-256 match the table below (a truncated or altered file is refused in one
line naming the path and the fix), whether found or downloaded.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexpl.data.folders import cache_dir, search_dirs
from flexpl.errors import MissingData, UserError


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives inside its tarball, and what the tarball must be."""

    name: str
    archive: str
    folder: str
    train: tuple[str, ...]
    test: str
    label_key: bytes
    num_classes: int
    size: int
    sha256: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# Sizes and SHA-256 of the official tarballs (https://www.cs.toronto.edu/~kriz/cifar.html; the
# same digests Keras' cifar10/cifar100 loaders pin). Mean/std per channel: the training set's,
# as commonly used for normalisation.
SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec("cifar10", "cifar-10-python.tar.gz", "cifar-10-batches-py",
                         tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels", 10,
                         170_498_071, "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                         (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": CifarSpec("cifar100", "cifar-100-python.tar.gz", "cifar-100-python", ("train",), "test",
                          b"fine_labels", 100,
                          169_001_437, "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
                          (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

BASE_URL = "https://www.cs.toronto.edu/~kriz"


def check_archive(path: Path, spec: CifarSpec) -> None:
    """Raise UserError unless ``path`` has the tarball's size and SHA-256."""
    fix = f"delete it (it will be fetched again) or put the official {spec.archive} there"
    size = path.stat().st_size
    if size != spec.size:
        what = "truncated" if size < spec.size else "too long"
        raise UserError(f"{path}: {what} ({size} bytes, expected {spec.size}); {fix}")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != spec.sha256:
        raise UserError(f"{path}: checksum mismatch (SHA-256 {digest.hexdigest()}, expected {spec.sha256}); {fix}")


def download(spec: CifarSpec, dest: Path, base_url: str | None = None, timeout: float = 60.0) -> Path:
    """Download the tarball into ``dest`` atomically; size and SHA-256 are checked before it is kept."""
    url = f"{(base_url or BASE_URL).rstrip('/')}/{spec.archive}"
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.archive}.", suffix=".tmp", dir=dest)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise UserError(f"{url}: {exc}") from None
        check_archive(tmp, spec)
        os.replace(tmp, dest / spec.archive)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest / spec.archive


def locate(name: str, base_url: str | None = None) -> Path:
    """The tarball for ``name``: found in the search folders, else downloaded into the cache."""
    spec = SPECS[name]
    dirs = search_dirs(name)
    for folder in dirs:
        if (folder / spec.archive).is_file():
            return folder / spec.archive
    try:
        return download(spec, cache_dir(name), base_url)
    except UserError as exc:
        raise MissingData(f"{name}: {spec.archive} not found in {', '.join(str(d) for d in dirs)} and the "
                        f"download failed ({exc}); set FLEXPL_DATA to a folder holding it") from None


def _batches(path: Path, spec: CifarSpec, members: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in members:
                fh = tar.extractfile(f"{spec.folder}/{m}")
                if fh is None:
                    raise KeyError(m)
                d = pickle.load(io.BytesIO(fh.read()), encoding="bytes")  # trusted: SHA-256 checked first
                xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(d[spec.label_key], dtype=np.int64))
    except (KeyError, OSError, EOFError, tarfile.TarError, pickle.UnpicklingError, ValueError) as exc:
        raise UserError(f"{path}: not a {spec.archive} ({type(exc).__name__}: {exc}); "
                        "delete it or put the official tarball there") from None
    return np.concatenate(xs), np.concatenate(ys)


def load(name: str, path: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalized ``(train_x float32 [N,3,32,32], train_y int64, test_x, test_y)`` of ``name``."""
    spec = SPECS[name]
    path = locate(name) if path is None else Path(path)
    check_archive(path, spec)
    tx, ty = _batches(path, spec, spec.train)
    vx, vy = _batches(path, spec, (spec.test,))
    for y, where in ((ty, "train"), (vy, "test")):
        if len(y) and (int(y.max()) >= spec.num_classes or int(y.min()) < 0):
            raise UserError(f"{path}: a {where} label is outside 0..{spec.num_classes - 1}")
    mean = np.asarray(spec.mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[None, :, None, None]

    def norm(x: np.ndarray) -> np.ndarray:
        return ((x.astype(np.float32) / np.float32(255.0)) - mean) / std

    return norm(tx), ty, norm(vx), vy
