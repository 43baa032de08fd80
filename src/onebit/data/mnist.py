"""MNIST and Fashion-MNIST from the canonical IDX files.

The loader reads ``<data root>/mnist/`` (or ``<data root>/fashion-mnist/``) holding
the four canonical files, gzip-compressed (``train-images-idx3-ubyte.gz``, ...)
or uncompressed (``train-images-idx3-ubyte``, ...), and downloads missing ones.
For MNIST the decompressed content is checked against the canonical SHA-256, so a
recompressed copy is accepted but a modified one is not.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .download import CorruptDatasetError, DatasetNotFoundError, Resource, data_root, fetch
from .imageset import ImageSet

__all__ = ["CLASSES", "FASHION_CLASSES", "FASHION_MEAN", "FASHION_STD", "MEAN", "STD", "load_mnist", "read_idx"]

#: Per-channel mean of the MNIST training images, in [0, 1] pixel units.
MEAN = (0.1307,)
#: Per-channel standard deviation of the MNIST training images, in [0, 1] pixel units.
STD = (0.3081,)
#: Per-channel mean of the Fashion-MNIST training images, in [0, 1] pixel units.
FASHION_MEAN = (0.2860,)
#: Per-channel standard deviation of the Fashion-MNIST training images, in [0, 1] pixel units.
FASHION_STD = (0.3530,)

_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

# (images, labels) file names, uncompressed.
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class _Variant:
    title: str
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    gz_md5: dict[str, str]  # canonical .gz download, keyed by uncompressed name
    raw_sha256: dict[str, str]  # canonical decompressed content; empty if not established


_VARIANTS = {
    "mnist": _Variant(
        title="MNIST",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        classes=tuple(str(digit) for digit in range(10)),
        gz_md5={
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        raw_sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    "fashion-mnist": _Variant(
        title="Fashion-MNIST",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        gz_md5={
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        raw_sha256={},
    ),
}


#: Class names of MNIST and of Fashion-MNIST, in label order.
CLASSES = _VARIANTS["mnist"].classes
FASHION_CLASSES = _VARIANTS["fashion-mnist"].classes


def read_idx(path: str | os.PathLike[str], magic: int, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a ``uint8`` array.

    Args:
        path: The file; a name ending in ``.gz`` is decompressed first.
        magic: Expected magic number, e.g. 2051 for images or 2049 for labels.
        sha256: If given, the expected SHA-256 of the decompressed content.

    Returns:
        A read-only ``uint8`` array with the shape stored in the header, e.g.
        ``(N, 28, 28)`` for images or ``(N,)`` for labels.

    Raises:
        CorruptDatasetError: The file is not valid gzip, is truncated, has the wrong
            magic number, or differs from the expected checksum.
    """
    path = Path(path)
    redo = f"Delete {path} and run again to re-download it, or replace it with a good copy."
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise CorruptDatasetError(f"{path} is not a complete gzip file ({err}). {redo}") from err

    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise CorruptDatasetError(
            f"{path} is not the expected IDX file: magic number {found}, expected {magic} "
            f"(0x{magic:08x}). {redo}"
        )
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise CorruptDatasetError(f"{path} is truncated inside its IDX header. {redo}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = offset + int(np.prod(shape))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise CorruptDatasetError(
            f"{path} is {what}: the header says shape {shape}, i.e. {expected} bytes, "
            f"but the content has {len(data)} bytes. {redo}"
        )
    if sha256 is not None and (actual := hashlib.sha256(data).hexdigest()) != sha256:
        raise CorruptDatasetError(
            f"{path} differs from the canonical file (SHA-256 of the decompressed content "
            f"is {actual}, expected {sha256}). {redo}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _locate(directory: Path, name: str, variant: _Variant, download: bool) -> Path:
    """Return the uncompressed file if present, else the .gz (downloaded if needed)."""
    raw = directory / name
    if raw.is_file():
        return raw
    resource = Resource(
        filename=f"{name}.gz",
        urls=tuple(mirror + f"{name}.gz" for mirror in variant.mirrors),
        algorithm="md5",
        digest=variant.gz_md5[name],
    )
    try:
        return fetch(resource, directory, download=download)
    except DatasetNotFoundError as err:
        raise DatasetNotFoundError(f"{variant.title}: {err}\n(The uncompressed {name} is accepted too.)") from None


def load_mnist(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    variant: str = "mnist",
    download: bool = True,
) -> ImageSet:
    """Load MNIST or Fashion-MNIST.

    Files are read from ``data_root(root) / variant``, e.g. ``~/.cache/onebit/mnist``
    (see :func:`~onebit.data.download.data_root`); missing ones are downloaded from
    the canonical mirrors if ``download`` is true.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: Data root; defaults to ``$ONEBIT_DATA``, then ``~/.cache/onebit``.
        variant: ``"mnist"`` or ``"fashion-mnist"``.
        download: Download missing files.

    Returns:
        An :class:`ImageSet` with ``images`` of shape ``(N, 1, 28, 28)`` (``uint8``),
        ``labels`` of shape ``(N,)`` (``int64``, 0..9) and the 10 class names.
        Normalize with :data:`MEAN`/:data:`STD` (or :data:`FASHION_MEAN`/:data:`FASHION_STD`).

    Raises:
        DatasetNotFoundError: A file is missing and could not be downloaded.
        CorruptDatasetError: A file is malformed, truncated or (MNIST) not the canonical one.
    """
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {sorted(_VARIANTS)}, got {variant!r}")
    spec = _VARIANTS[variant]
    directory = data_root(root) / variant
    images_name, labels_name = _FILES[split]

    images_path = _locate(directory, images_name, spec, download)
    labels_path = _locate(directory, labels_name, spec, download)
    images = read_idx(images_path, _IMAGES_MAGIC, spec.raw_sha256.get(images_name))
    labels = read_idx(labels_path, _LABELS_MAGIC, spec.raw_sha256.get(labels_name))

    if images.shape[1:] != (28, 28):
        raise CorruptDatasetError(f"{images_path} holds images of size {images.shape[1:]}, expected (28, 28).")
    if len(images) != len(labels):
        raise CorruptDatasetError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
            f"they must come from the same {spec.title} release. Delete both and run again."
        )
    if len(labels) and labels.max() >= len(spec.classes):
        raise CorruptDatasetError(f"{labels_path} has label {labels.max()}, expected 0..{len(spec.classes) - 1}.")

    verified = " (content matches canonical SHA-256)" if spec.raw_sha256 else ""
    return ImageSet(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(spec.classes),
        source=f"{images_path}{verified}",
    )
