"""Folders of image files: torchvision's ImageFolder layout, decoded once and cached.

An image folder ``DIR`` holds ``DIR/train/<class>/*.png`` (also ``.jpg``, ``.jpeg``, ``.bmp``,
in any letter case, in subfolders too), and optionally ``DIR/val/<class>/...`` and
``DIR/test/<class>/...``. The class folders of ``train/`` name the classes, in sorted order;
``val/`` and ``test/`` may lack a class but not hold another. Hidden files and folders, and files
with other suffixes, are ignored.

:func:`load_image_folder` decodes every image with Pillow the same way (:class:`Preprocess`):
converted to grayscale when every image of the folder has a single channel, else to RGB, and
resized (bilinear, antialiased) to one size: the one given, else the size all images share.
The decoded uint8 arrays are cached in ``DIR/.onebit-cache/`` (or, when ``DIR`` is read-only,
under ``~/.cache/onebit/image-folders/``), one file per image size asked for, keyed by the
folder's file list, file sizes and modification times: a second load reads the cache, and
adding, removing or changing an image decodes the folder again (and removes the stale cache).
The cache is written atomically, and nothing is written before every image has decoded.

Bad input raises :class:`~onebit.data.CorruptDatasetError` (a ``ValueError``) naming the file or
folder and the fix: an unreadable image, a class folder without images, a single class, images
of several sizes without an image size, a ``val/`` or ``test/`` without images or with a class
``train/`` lacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .._shape import image_shape
from .decode import DECODE_ERRORS, IMAGE_SUFFIXES, Preprocess, image_files, read_image, unreadable_image_error
from .download import CorruptDatasetError, DatasetNotFoundError, cache_dir
from .imageset import ImageSet

__all__ = ["SPLITS", "CACHE_FOLDER", "FolderImages", "load_image_folder"]

#: The split folders of an image folder; ``train/`` is required.
SPLITS = ("train", "val", "test")
#: The cache folder inside an image folder.
CACHE_FOLDER = ".onebit-cache"
# Bump when decoding changes, so that old caches are ignored.
_CACHE_VERSION = 1


@dataclass
class FolderImages:
    """An image folder as decoded by :func:`load_image_folder`.

    Attributes:
        classes: class names (the class folders of ``train/``, sorted).
        splits: ``{"train": ...}`` and ``"val"``, ``"test"`` when the folder has them: uint8
            images ``(N, C, H, W)`` with their labels, in file-name order per class.
        preprocess: how every image was decoded.
        source: a description for reports, e.g. ``"image folder, 120 images"``.
    """

    classes: list[str]
    splits: dict[str, ImageSet]
    preprocess: Preprocess
    source: str


def _class_folders(directory: Path) -> list[str]:
    return sorted(d.name for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))


_LAYOUT = ("an image folder holds DIR/train/<class>/*.png (also .jpg, .jpeg, .bmp) and optionally DIR/val/<class>/ "
           "and DIR/test/<class>/, torchvision's ImageFolder layout")


def _scan(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """The classes and every split's ``(file, label)``, checking the layout."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"no image folder at {root}: {_LAYOUT}")
    train = root / "train"
    if not train.is_dir():
        roots = [name for name in ("mnist", "fashion-mnist", "cifar10", "omniglot") if (root / name).is_dir()]
        hint = (f" {root} looks like a dataset root (it holds {'/, '.join(roots)}/): pass it as --data-root {root} "
                f"or set ONEBIT_DATA={root}, and name the dataset with --data." if roots else "")
        raise CorruptDatasetError(f"{root} has no train/ folder; {_LAYOUT}.{hint}")
    classes = _class_folders(train)
    if not classes:
        loose = " It holds images directly: move them into one folder per class." if image_files(train) else ""
        raise CorruptDatasetError(f"{train} has no class folders: put the images of each class in "
                                  f"{train}/<class>/.{loose}")
    if len(classes) == 1:
        raise CorruptDatasetError(f"{train} has a single class folder ({classes[0]}/): a classifier needs at least "
                                  f"two classes; add a folder of images for each other class")
    found: dict[str, list[tuple[Path, int]]] = {}
    for split in SPLITS:
        directory = root / split
        if not directory.is_dir():
            continue
        entries = []
        for name in _class_folders(directory):
            if name not in classes:
                raise CorruptDatasetError(f"{directory / name}/ is not a class of {train}/ ({', '.join(classes)}): "
                                          f"rename it to one of them, or add {train / name}/ with training images")
            files = image_files(directory / name)
            if not files:
                raise CorruptDatasetError(f"{directory / name}/ holds no images ({', '.join(IMAGE_SUFFIXES)}): add "
                                          f"images or remove the folder")
            entries += [(path, classes.index(name)) for path in files]
        if not entries:
            without = ("report validation accuracy only" if split == "test"
                       else "hold out part of train/ for validation")
            raise CorruptDatasetError(f"{directory}/ holds no images: put them in {directory}/<class>/, or remove "
                                      f"{directory}/ to {without}")
        found[split] = entries
    return classes, found


def _cache_name(root: Path, files: dict[str, list[tuple[Path, int]]], image_size: tuple[int, int] | None) -> str:
    """``<size>-<fingerprint>.npz``: the image size asked for (``native``: the images' own) and a
    hash of every file's split, path, label, size and modification time."""
    digest = hashlib.sha256(f"v{_CACHE_VERSION}\n".encode())
    for split, entries in files.items():
        for path, label in entries:
            stat = path.stat()
            digest.update(f"{split}\0{path.relative_to(root)}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    size = "native" if image_size is None else "x".join(map(str, image_size))
    return f"{size}-{digest.hexdigest()[:20]}.npz"


def _cache_folders(root: Path) -> list[Path]:
    """Where the folder's cache may be: inside it, else in the per-user cache."""
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return [root / CACHE_FOLDER, cache_dir() / "image-folders" / key]


def _read_cache(root: Path, name: str) -> FolderImages | None:
    for folder in _cache_folders(root):
        path = folder / name
        if not path.is_file():
            continue
        try:
            with np.load(path, allow_pickle=False) as arrays:
                meta = json.loads(arrays["meta"].tobytes())
                splits = {split: ImageSet(torch.from_numpy(arrays[f"{split}_images"]),
                                          torch.from_numpy(arrays[f"{split}_labels"]), meta["classes"], meta["source"])
                          for split in meta["splits"]}
            return FolderImages(meta["classes"], splits, Preprocess.from_json(meta["preprocess"]), meta["source"])
        except (OSError, ValueError, KeyError):
            continue  # unreadable or foreign: decode again (and replace it)
    return None


def _write_cache(root: Path, name: str, data: FolderImages) -> None:
    """Save ``data`` atomically as ``name`` in the first writable cache folder; remove the caches of
    the same image size made from other files (stale)."""
    meta = {"classes": data.classes, "source": data.source, "preprocess": data.preprocess.to_json(),
            "splits": list(data.splits)}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    for split, images in data.splits.items():
        arrays[f"{split}_images"] = images.images.numpy()
        arrays[f"{split}_labels"] = images.labels.numpy()
    for folder in _cache_folders(root):
        tmp = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, folder / name)
            tmp = None
            size = name.split("-")[0]
            for stale in folder.glob(f"{size}-*.npz"):
                if stale.name != name:
                    stale.unlink(missing_ok=True)
            return
        except OSError:
            continue  # read-only folder: try the next place
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def _size_error(root: Path, sizes: dict[Path, tuple[int, int]]) -> CorruptDatasetError:
    counts = Counter(sizes.values())
    example = {size: next(p for p, s in sizes.items() if s == size) for size in counts}
    listed = "; ".join(f"{w}x{h}: {n} image{'s' * (n != 1)}, e.g. {example[(w, h)].relative_to(root)}"
                       for (w, h), n in counts.most_common(3))
    (w, h), _ = counts.most_common(1)[0]
    more = f" and {len(counts) - 3} more sizes" if len(counts) > 3 else ""
    return CorruptDatasetError(f"the images in {root} have {len(counts)} different sizes (width x height: {listed}"
                               f"{more}): pass --image-size to resize them all to one size, e.g. --image-size "
                               f"{h if h == w else f'{h}x{w}'} (height x width)")


def _single_channel(image: Image.Image) -> bool:
    return len(image.getbands()) == 1 and image.mode != "P"


def load_image_folder(path: str | os.PathLike, image_size: int | Sequence[int] | None = None) -> FolderImages:
    """Decode an image folder (see the module docstring), or read its cache.

    Args:
        path: the folder ``DIR`` holding ``train/`` (and optionally ``val/``, ``test/``).
        image_size: resize every image to this size (an int for square images, or
            ``(height, width)``); ``None`` keeps the size every image shares.

    Returns:
        :class:`FolderImages`: the classes, the splits the folder has, and how they were decoded.

    Raises:
        DatasetNotFoundError: ``path`` is not a folder.
        CorruptDatasetError: the layout or an image is wrong (the message names the file or
            folder and the fix).
    """
    root = Path(path).expanduser().absolute()
    size = None if image_size is None else image_shape(image_size)
    classes, files = _scan(root)
    cache = _cache_name(root, files, size)
    cached = _read_cache(root, cache)
    if cached is not None:
        return cached
    entries = [(split, path, label) for split, listed in files.items() for path, label in listed]
    sizes, single = {}, True
    for _, file, _ in entries:  # headers only: sizes and channels decide how to decode
        try:
            with Image.open(file) as image:
                sizes[file] = image.size
                single &= _single_channel(image)
        except DECODE_ERRORS as error:
            raise unreadable_image_error(file, error) from error
    if size is None:
        if len(set(sizes.values())) > 1:
            raise _size_error(root, sizes)
        width, height = next(iter(sizes.values()))
        size = (height, width)
    preprocess = Preprocess("L" if single else "RGB", size)
    decoded: dict[str, list[np.ndarray]] = {split: [] for split in files}
    for split, file, _ in tqdm(entries, desc=f"Decoding {root.name}/", unit="img", disable=None):
        decoded[split].append(read_image(file, preprocess))
    source = f"image folder, {len(entries):,} images"
    splits = {split: ImageSet(torch.from_numpy(np.stack(images)),
                              torch.tensor([label for _, label in files[split]], dtype=torch.int64), classes, source)
              for split, images in decoded.items()}
    data = FolderImages(classes, splits, preprocess, source)
    _write_cache(root, cache, data)
    return data

