"""CIFAR-10, from the canonical binary release or an image-folder copy.

:func:`load_cifar10` looks in ``<data root>/cifar10/`` for, in this order:

1. ``cifar-10-binary.tar.gz``, the canonical binary release (or its extracted
   ``cifar-10-batches-bin/`` folder);
2. an image folder ``train/<class>/*.png|jpg`` and ``test/<class>/*``, extracted
   in that directory or packed as a ``*.tar.gz`` / ``*.tgz`` there (e.g. the
   lossy ``cifar10-jpg.tar.gz``);
3. otherwise it downloads the canonical binary release.

The decoded arrays are cached as ``.npy`` files in the per-user cache directory
(``~/.cache/onebit/decoded/``), keyed by the source's path, size and modification
time, so a changed source is decoded again. The data root itself is never written
to except for downloads, so it may be a read-only shared copy.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .decode import IMAGE_SUFFIXES
from .download import CorruptDatasetError, DatasetNotFoundError, Resource, cache_dir, data_root, fetch
from .imageset import ImageSet

__all__ = ["CLASSES", "MEAN", "STD", "load_cifar10"]

#: Class names in label order.
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: Per-channel (R, G, B) mean of the canonical training images, in [0, 1] pixel units.
MEAN = (0.4914, 0.4822, 0.4465)
#: Per-channel (R, G, B) standard deviation of the canonical training images, in [0, 1] pixel units.
STD = (0.2470, 0.2435, 0.2616)

BINARY_RELEASE = Resource(
    filename="cifar-10-binary.tar.gz",
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
    algorithm="md5",
    digest="c32a1d4ab5d03f1284b67883e8d87530",
)
_BINARY_DIR = "cifar-10-batches-bin"
_BATCHES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
_RECORD_BYTES = 1 + 3 * 32 * 32  # label byte, then R, G, B planes of 32x32
_SPLITS = ("train", "test")
_CACHE_VERSION = 1

_Arrays = dict[str, np.ndarray]  # "<split>_images" (N, 3, 32, 32) uint8, "<split>_labels" (N,) int64
_Decoder = Callable[[Path], tuple[_Arrays, str]]


def load_cifar10(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
) -> ImageSet:
    """Load CIFAR-10.

    Reads ``data_root(root) / "cifar10"`` (see the module docstring for the copies it
    accepts) and decodes it once into a cache; later calls load the cache.

    Args:
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000 images).
        root: Data root; defaults to ``$ONEBIT_DATA``, then ``~/.cache/onebit``.
        download: Download the canonical binary release if no copy is present.

    Returns:
        An :class:`ImageSet` with ``images`` of shape ``(N, 3, 32, 32)`` (``uint8``, RGB),
        ``labels`` of shape ``(N,)`` (``int64``, 0..9), ``classes`` = :data:`CLASSES`, and
        ``source`` naming the copy, e.g. ``"cifar10-jpg.tar.gz (lossy JPEG re-encode)"``:
        report it with every CIFAR-10 figure. Normalize with :data:`MEAN`/:data:`STD`.

    Raises:
        DatasetNotFoundError: No copy is present and none could be downloaded.
        CorruptDatasetError: The copy is truncated or malformed, lacks a batch file or
            a class folder, has an unexpected class folder, or holds an image that
            is not 32x32.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    path, wanted, decode = _find_source(data_root(root) / "cifar10", download)
    cached = cache_dir() / "decoded" / f"cifar10-{_fingerprint(path, wanted)}"
    if cached.is_dir():
        images, labels, description = _read_cache(cached, split)
    else:
        arrays, description = decode(path)
        _write_cache(cached, arrays, description)
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    return ImageSet(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        classes=list(CLASSES),
        source=description,
    )


# --------------------------------------------------------------------------- sources


def _is_batch(name: str) -> bool:
    return PurePosixPath(name).name in _BATCHES["train"] + _BATCHES["test"]


def _is_image(name: str) -> bool:
    """True for ``[...]/<split>/<class>/<file>.<image suffix>``."""
    parts = PurePosixPath(name).parts
    return len(parts) >= 3 and parts[-3] in _SPLITS and name.lower().endswith(IMAGE_SUFFIXES)


def _find_source(directory: Path, download: bool) -> tuple[Path, Callable[[str], bool], _Decoder]:
    """Pick the copy to read: (path, filter of relevant member names, decoder)."""
    binary_dir = directory / _BINARY_DIR
    archive = directory / BINARY_RELEASE.filename
    if archive.is_file():
        return archive, _is_batch, _decode_binary
    if binary_dir.is_dir():
        return binary_dir, _is_batch, _decode_binary
    if any((directory / split).is_dir() for split in _SPLITS):
        return directory, _is_image, _decode_folder
    folder_archives = sorted([*directory.glob("*.tar.gz"), *directory.glob("*.tgz")])
    if folder_archives:
        return folder_archives[0], _is_image, _decode_folder
    try:
        return fetch(BINARY_RELEASE, directory, download=download), _is_batch, _decode_binary
    except DatasetNotFoundError as err:
        raise DatasetNotFoundError(
            f"CIFAR-10: {err}\nAlso accepted in {directory}: the extracted {_BINARY_DIR}/ folder, or "
            f"an image folder train/<class>/*.png and test/<class>/*.png (extracted, or as a "
            f"*.tar.gz such as cifar10-jpg.tar.gz)."
        ) from None


def _dir_files(directory: Path, wanted: Callable[[str], bool]) -> list[Path]:
    return sorted(
        f for f in directory.rglob("*") if wanted(f.relative_to(directory).as_posix()) and f.is_file()
    )


def _iter_files(path: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, content)`` of the regular files of a directory or tar archive that pass ``wanted``."""
    if path.is_dir():
        for f in _dir_files(path, wanted):
            yield f.relative_to(path).as_posix(), f.read_bytes()
        return
    try:
        # Random-access mode: unlike stream mode ("r|gz"), it raises on a truncated gzip stream.
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and wanted(member.name):
                    yield member.name, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise CorruptDatasetError(
            f"{path} is truncated or not a valid tar archive ({err}). {_redo(path)}"
        ) from err


def _redo(path: Path) -> str:
    return (
        f"Replace {path} with a complete copy, or delete it (onebit then uses another copy in "
        f"{path.parent}, or downloads the canonical {BINARY_RELEASE.filename})."
    )


def _describe(path: Path, kind: str) -> str:
    return f"{path.name}{'/' if path.is_dir() else ''} ({kind})"


def _decode_binary(path: Path) -> tuple[_Arrays, str]:
    """Decode the canonical binary batches: records of 1 label byte + 3072 pixel bytes."""
    found = {PurePosixPath(name).name: data for name, data in _iter_files(path, _is_batch)}
    arrays: _Arrays = {}
    for split, names in _BATCHES.items():
        missing = [name for name in names if name not in found]
        if missing:
            raise CorruptDatasetError(f"{path} lacks {', '.join(missing)}. {_redo(path)}")
        for name in names:
            size = len(found[name])
            if size == 0 or size % _RECORD_BYTES:
                raise CorruptDatasetError(
                    f"{name} in {path} is truncated: {size} bytes is not a whole number of "
                    f"{_RECORD_BYTES}-byte records. {_redo(path)}"
                )
        table = np.concatenate([np.frombuffer(found[name], np.uint8).reshape(-1, _RECORD_BYTES) for name in names])
        if table[:, 0].max() >= len(CLASSES):
            raise CorruptDatasetError(f"{path} has label {table[:, 0].max()} in {split}, expected 0..9. {_redo(path)}")
        arrays[f"{split}_images"] = np.ascontiguousarray(table[:, 1:].reshape(-1, 3, 32, 32))
        arrays[f"{split}_labels"] = table[:, 0].astype(np.int64)
    return arrays, _describe(path, "canonical binary release")


def _decode_image(data: bytes, name: str, source: Path) -> np.ndarray:
    """Decode one image file to a (32, 32, 3) uint8 RGB array."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size != (32, 32):
                raise CorruptDatasetError(
                    f"{name} in {source} is {image.width}x{image.height} pixels; CIFAR-10 images "
                    f"are 32x32. {_redo(source)}"
                )
            return np.asarray(image.convert("RGB"))
    except OSError as err:  # includes PIL.UnidentifiedImageError and truncated images
        raise CorruptDatasetError(f"cannot decode {name} in {source} ({err}). {_redo(source)}") from err


def _decode_folder(path: Path) -> tuple[_Arrays, str]:
    """Decode an image folder ``<split>/<class>/<file>``; samples sorted by class, then file name."""
    entries: dict[str, list[tuple[int, str, np.ndarray]]] = {split: [] for split in _SPLITS}
    lossy = False
    files = _iter_files(path, _is_image)
    for name, data in tqdm(files, desc=f"Decoding {path.name}", unit="img", disable=None):
        *_, split, class_name, filename = PurePosixPath(name).parts
        if class_name not in CLASSES:
            raise CorruptDatasetError(
                f"{path} has an unexpected class folder {split}/{class_name}/; the class folders "
                f"must be named {', '.join(CLASSES)}."
            )
        entries[split].append((CLASSES.index(class_name), name, _decode_image(data, name, path)))
        lossy |= filename.lower().endswith((".jpg", ".jpeg"))

    arrays: _Arrays = {}
    for split, samples in entries.items():
        present = {label for label, _, _ in samples}
        missing = [f"{split}/{name}/" for label, name in enumerate(CLASSES) if label not in present]
        if missing:
            raise CorruptDatasetError(
                f"{path} has no images in {', '.join(missing)}; an image-folder copy of CIFAR-10 "
                f"needs train/<class>/ and test/<class>/ for all 10 classes. {_redo(path)}"
            )
        samples.sort(key=lambda sample: sample[:2])
        arrays[f"{split}_images"] = np.stack([image for _, _, image in samples]).transpose(0, 3, 1, 2).copy()
        arrays[f"{split}_labels"] = np.array([label for label, _, _ in samples], dtype=np.int64)
    return arrays, _describe(path, "lossy JPEG re-encode" if lossy else "image folder")


# --------------------------------------------------------------------------- cache


def _fingerprint(path: Path, wanted: Callable[[str], bool]) -> str:
    """Hash of the source's path, size and mtime (of each relevant file, for a directory)."""
    digest = hashlib.sha256(f"v{_CACHE_VERSION}".encode())
    for f in _dir_files(path, wanted) if path.is_dir() else [path]:
        stat = f.stat()
        digest.update(f"{f.absolute()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _read_cache(cached: Path, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        images = np.load(cached / f"{split}_images.npy", allow_pickle=False)
        labels = np.load(cached / f"{split}_labels.npy", allow_pickle=False)
        description = (cached / "source.txt").read_text(encoding="utf-8")
    except (OSError, ValueError) as err:
        raise CorruptDatasetError(
            f"The decoded CIFAR-10 cache {cached} is unreadable ({err}); delete that folder and run again."
        ) from err
    return images, labels, description


def _write_cache(cached: Path, arrays: _Arrays, description: str) -> None:
    """Save the arrays to ``cached`` atomically (build a temporary folder, then rename it)."""
    tmp: Path | None = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{cached.name}."))
        for key, array in arrays.items():
            np.save(tmp / f"{key}.npy", array, allow_pickle=False)
        (tmp / "source.txt").write_text(description, encoding="utf-8")
        tmp.rename(cached)
        tmp = None
    except OSError as err:
        if not cached.is_dir():  # else another process just wrote the same cache
            warnings.warn(
                f"could not cache decoded CIFAR-10 in {cached} ({err}); it will be decoded again next "
                f"time. Set XDG_CACHE_HOME to a writable directory to fix this.",
                stacklevel=3,
            )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
