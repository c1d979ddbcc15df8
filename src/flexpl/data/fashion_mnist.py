"""Fashion-MNIST loader: IDX parsing with numpy, local search, checksummed download.

Search order for the four IDX files (``.gz`` or uncompressed):

1. ``$FLEXPL_DATA`` (the files directly in it, or in a ``fashion-mnist`` subfolder);
2. the user cache folder ``$XDG_CACHE_HOME/flexpl/fashion-mnist`` (default
   ``~/.cache/flexpl/fashion-mnist``);
3. ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).

When none holds the files they are downloaded into the user cache folder; each file is
verified with the SHA-256 of its *decompressed* content (Debian recompresses the ``.gz``
files, so checksums of the compressed bytes differ between sources).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from flexpl.data.folders import cache_dir as _cache_dir
from flexpl.data.folders import search_dirs as _search_dirs
from flexpl.errors import UserError

NAME = "fashion-mnist"
NUM_CLASSES = 10
MEAN = 0.2860
STD = 0.3530

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILES: tuple[str, ...] = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

#: SHA-256 of the decompressed IDX files (computed from the Debian package
#: dataset-fashion-mnist 0.0~git20200523.55506a9-1, identical to upstream content).
SHA256: dict[str, str] = {
    TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    TEST_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    TEST_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

#: Official download locations, tried in order.
BASE_URLS: tuple[str, ...] = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
)

#: System-wide folders searched after the user folders (Debian package location).
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)

_FIX = "delete it (it will be fetched again) or reinstall dataset-fashion-mnist"


def cache_dir() -> Path:
    """Return the user cache folder for Fashion-MNIST (``$XDG_CACHE_HOME/flexpl/fashion-mnist``)."""
    return _cache_dir(NAME)


def search_dirs() -> list[Path]:
    """Return the folders searched for the IDX files, in order (the system folders last)."""
    return _search_dirs(NAME) + list(SYSTEM_DIRS)


def _file_in(folder: Path, stem: str) -> Path | None:
    """Return the ``.gz`` or uncompressed file ``stem`` in ``folder``, if present."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def find_dir(dirs: Sequence[Path] | None = None) -> Path | None:
    """Return the first folder holding all four IDX files, or None."""
    for folder in search_dirs() if dirs is None else dirs:
        if all(_file_in(folder, stem) is not None for stem in FILES):
            return folder
    return None


def _read_bytes(path: Path) -> bytes:
    """Read a file, decompressing it when its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: corrupted file ({exc}); {_FIX}") from exc


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Parse an IDX file (``.gz`` or raw) of unsigned bytes into a uint8 array.

    ``magic`` is 2051 for images (3 dims) or 2049 for labels (1 dim). A wrong magic
    number, a wrong shape or a byte length that does not match raises UserError.
    """
    path = Path(path)
    ndim = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}[magic]
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(
            f"{path}: corrupted file (only {len(data)} bytes, shorter than the IDX header); {_FIX}"
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise UserError(
            f"{path}: corrupted file (IDX magic number {found}, expected {magic}); {_FIX}"
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise UserError(
            f"{path}: corrupted file ({len(data)} bytes, expected {expected} for dims {dims}); {_FIX}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _sha256_of_decompressed(path: Path) -> str:
    """Return the SHA-256 hex digest of a gzip file's decompressed content."""
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_file(url: str, dest: Path, expected_sha256: str, timeout: float) -> None:
    """Download ``url`` to ``dest`` atomically after checking the decompressed SHA-256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
        try:
            got = _sha256_of_decompressed(tmp)
        except (OSError, EOFError, zlib.error) as exc:
            raise UserError(f"{url}: downloaded file is not valid gzip ({exc})") from exc
        if got != expected_sha256:
            raise UserError(
                f"{url}: checksum mismatch (SHA-256 of decompressed content {got}, expected {expected_sha256})"
            )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def download(
    base_url: str | Sequence[str] | None = None,
    dest: Path | None = None,
    *,
    checksums: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download the four ``.gz`` IDX files into ``dest`` (default: the user cache folder).

    ``base_url`` is one URL (``https://``, ``http://`` or ``file://``) or several mirrors
    tried in order (default :data:`BASE_URLS`); files already present in ``dest`` are kept. Each file is checked
    against ``checksums`` (default :data:`SHA256`, SHA-256 of the decompressed content).
    Raises UserError (with every mirror's reason) when a file cannot be fetched.
    """
    dest = cache_dir() if dest is None else Path(dest)
    table = SHA256 if checksums is None else checksums
    if base_url is None:
        base_url = BASE_URLS
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    for stem in FILES:
        if _file_in(dest, stem) is not None:
            continue
        reasons: list[str] = []
        for base in urls:
            url = f"{base.rstrip('/')}/{stem}.gz"
            try:
                _download_file(url, dest / f"{stem}.gz", table[stem], timeout)
                break
            except UserError as exc:
                reasons.append(str(exc))
            # URLError, HTTP errors, timeouts, unknown URL schemes
            except (OSError, ValueError, http.client.HTTPException) as exc:
                reasons.append(f"{url}: {exc}")
        else:
            raise UserError(f"download of Fashion-MNIST {stem}.gz failed: {'; '.join(reasons)}")
    return dest


def locate(
    *,
    base_url: str | Sequence[str] | None = None,
    checksums: Mapping[str, str] | None = None,
) -> Path:
    """Return a folder with the four IDX files, downloading them into the cache if needed."""
    dirs = search_dirs()
    folder = find_dir(dirs)
    if folder is not None:
        return folder
    try:
        return download(base_url, checksums=checksums)
    except UserError as exc:
        places = ", ".join(str(d) for d in dirs)
        raise UserError(
            f"Fashion-MNIST not found in {places} and the download failed ({exc}); "
            f"set FLEXPL_DATA to a folder with the 4 IDX files ({', '.join(FILES)}, .gz or not), "
            "or run `apt-get install dataset-fashion-mnist`"
        ) from exc


def load_raw(
    folder: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return uint8 ``(train_x [N,28,28], train_y [N], test_x, test_y)`` from ``folder``.

    Without ``folder`` the files are located with :func:`locate` (may download).
    """
    root = locate() if folder is None else Path(folder)
    paths: dict[str, Path] = {}
    for stem in FILES:
        found = _file_in(root, stem)
        if found is None:
            raise UserError(
                f"{root}: missing {stem}.gz (or {stem}); Fashion-MNIST needs {', '.join(FILES)}"
            )
        paths[stem] = found
    out = []
    for images, labels in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        x = read_idx(paths[images], IMAGES_MAGIC)
        y = read_idx(paths[labels], LABELS_MAGIC)
        if x.shape[1:] != (28, 28):
            raise UserError(
                f"{paths[images]}: images are {x.shape[1]}x{x.shape[2]}, Fashion-MNIST needs 28x28; {_FIX}"
            )
        if len(x) != len(y):
            raise UserError(
                f"{paths[labels]}: {len(y)} labels but {paths[images]} has {len(x)} images; {_FIX}"
            )
        if len(y) and int(y.max()) >= NUM_CLASSES:
            raise UserError(f"{paths[labels]}: label {int(y.max())} out of range 0..9; {_FIX}")
        out += [x, y]
    return out[0], out[1], out[2], out[3]


def normalize(x: np.ndarray) -> np.ndarray:
    """Map uint8 images ``[N,H,W]`` to float32 ``[N,1,H,W]``: x/255, then (x - 0.2860) / 0.3530."""
    scaled = x.astype(np.float32) / np.float32(255.0)
    scaled -= np.float32(MEAN)
    scaled /= np.float32(STD)
    return scaled[:, None, :, :]


def load(folder: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return normalized ``(train_x float32 [N,1,28,28], train_y int64, test_x, test_y)``."""
    tx, ty, vx, vy = load_raw(folder)
    return normalize(tx), ty.astype(np.int64), normalize(vx), vy.astype(np.int64)
