"""One loader for every dataset: the built-in ones by name, any image folder by its path.

    >>> data = dataset("fashion-mnist").load()          # or dataset("path/to/photos")
    >>> data.splits["train"], data.info.mean, data.test_arrays(raw=True)

Names: ``mnist``, ``fashion-mnist``, ``cifar10`` and ``omniglot`` (its classification view: the
964 characters of the background alphabets, by drawer: drawings 1-14 of every character train, 15-16
validate, 17-20 test). Each is split the way the experiments train on it, with its published
per-channel mean and std. MNIST, Fashion-MNIST and CIFAR-10 hold out a seeded 5,000 of their
training images for validation (seed 0, the same for every run).

Any other name is a path to an image folder (:mod:`onebit.data.imagefolder`: torchvision's
ImageFolder layout). Without ``val/``, a seeded fraction of ``train/`` is held out for validation;
without ``test/`` the data has no test split and runs report their validation accuracy. Its mean
and std are those of its training split.

A :class:`Dataset` is a name and where to find it; :meth:`Dataset.load` reads it into an
:class:`ImageData`; :attr:`Dataset.info` (a :class:`DataInfo`) is what a trained model needs to
know about its data (classes, input size, normalization, how image files become inputs), known
without loading for the built-in datasets.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._shape import image_shape
from .decode import Preprocess
from .download import DatasetNotFoundError, data_root
from .imagefolder import load_image_folder
from .imageset import ImageSet

__all__ = ["NAMES", "DataInfo", "ImageData", "Dataset", "dataset", "from_spec", "channel_stats"]

#: Seed of every held-out validation split (the same images for every run).
SPLIT_SEED = 0
#: Fraction of an image folder's ``train/`` held out for validation when it has no ``val/``.
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class DataInfo:
    """What a model trained on a dataset needs to know about it, for export and inference.

    Attributes:
        name: the dataset's name, or the absolute path of an image folder.
        classes: class names; ``classes[k]`` is label ``k``.
        mean, std: per-channel normalization in [0, 1] pixel units: inputs are
            ``(pixel / 255 - mean) / std``.
        preprocess: how an image file becomes an input (channels, size, resampling).
    """

    name: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess: Preprocess

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input."""
        return (self.preprocess.channels, *self.preprocess.size)

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` per channel, on pixels scaled to [0, 1]."""
        return self.mean, self.std

    def to_json(self) -> dict[str, Any]:
        """The record a run's ``data.json`` and a packed model's metadata keep."""
        return {"name": self.name, "classes": list(self.classes), "input_size": list(self.input_size),
                "mean": list(self.mean), "std": list(self.std), "preprocess": self.preprocess.to_json()}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> DataInfo:
        """The :class:`DataInfo` of a :meth:`to_json` record."""
        return cls(record["name"], tuple(record["classes"]), tuple(record["mean"]), tuple(record["std"]),
                   Preprocess.from_json(record["preprocess"]))


@dataclass
class ImageData:
    """A dataset in memory, split for training.

    Attributes:
        info: see :class:`DataInfo`.
        splits: ``"train"``, ``"val"`` and, when the data has one, ``"test"``.
        source: which copy the images came from (report it with every figure).
        held_out: how the validation split was made, e.g. ``"5,000 of the training images (seed 0)"``,
            or ``""`` for a ``val/`` folder.
    """

    info: DataInfo
    splits: dict[str, ImageSet]
    source: str
    held_out: str = ""

    @property
    def eval_split(self) -> str:
        """The split a trained model is evaluated on: ``"test"``, else ``"val"``."""
        return "test" if "test" in self.splits else "val"

    def arrays(self, split: str, *, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of ``split`` as numpy arrays: images ``(N, C, H, W)`` float32
        normalized exactly as training normalizes them, or the uint8 pixels with ``raw=True``;
        labels int64 ``(N,)``."""
        data = self.splits[split]
        images = data.images.numpy()
        if not raw:
            mean = np.asarray(self.info.mean, np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(self.info.std, np.float32).reshape(1, -1, 1, 1)
            images = (images.astype(np.float32) / 255 - mean) / std
        return images, data.labels.numpy()

    def test_arrays(self, *, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`arrays` of :attr:`eval_split`: the test split, or validation without one."""
        return self.arrays(self.eval_split, raw=raw)

    def sizes(self) -> dict[str, int]:
        """The number of images of each split."""
        return {split: len(images) for split, images in self.splits.items()}

    def record(self) -> dict[str, Any]:
        """What a run directory's ``data.json`` keeps: :class:`DataInfo`, the source and the splits."""
        return {**self.info.to_json(), "source": self.source, "splits": self.sizes(), "held_out": self.held_out}

    def describe(self) -> str:
        """One line: the data, its classes, input size and splits."""
        return describe(self.record())


def describe(record: dict[str, Any]) -> str:
    """One line about the data of a :meth:`ImageData.record` (``data.json``)."""
    classes = record["classes"]
    shown = ", ".join(classes[:5]) + (f", ... ({len(classes)} in all)" if len(classes) > 5 else "")
    channels, height, width = record["input_size"]
    splits = record["splits"]
    held = f" (held out of the training images: {record['held_out']})" if record.get("held_out") else ""
    parts = [f"{splits['train']:,} train", f"{splits['val']:,} validation{held}"]
    parts.append(f"{splits['test']:,} test images" if "test" in splits else "no test split")
    color = "grayscale" if channels == 1 else "RGB"
    return (f"{record['name']} ({record['source']}): {len(classes)} classes ({shown}); {height}x{width} {color}; "
            f"{' / '.join(parts)}")


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images ``(N, C, H, W)``, in [0, 1] units
    (rounded to 6 decimals; a constant channel gets std 1/255)."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), 1024):  # float64 a chunk at a time
        chunk = images[start : start + 1024].double()
        total += chunk.sum((0, 2, 3))
        squares += chunk.square().sum((0, 2, 3))
    count = images.numel() / channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return (tuple(round(float(m) / 255, 6) for m in mean),
            tuple(round(max(float(s), 1.0) / 255, 6) for s in std))


class Dataset:
    """A dataset by name (or folder) and data root, not loaded yet; see :func:`dataset`."""

    name: str

    @property
    def spec(self) -> dict[str, Any]:
        """The dataset as a run's ``config.json`` records it: ``{"name": ..., **options}``."""
        raise NotImplementedError

    @property
    def info(self) -> DataInfo:
        """What the dataset is without loading it: classes, image shape, input normalization."""
        raise NotImplementedError

    def load(self) -> ImageData:
        """The dataset's images and labels, split into train, validation and test."""
        raise NotImplementedError

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """:attr:`DataInfo.normalization` of :attr:`info` (known without loading a built-in dataset)."""
        return self.info.normalization

    def test_arrays(self, *, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The evaluation split (test, else validation) as arrays: see :meth:`ImageData.arrays`."""
        return self.load().test_arrays(raw=raw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec})"


# --------------------------------------------------------------------------- built-in datasets


@dataclass(frozen=True)
class _Builtin:
    """A built-in dataset: constants, and how to read ``(train, val, test)`` from the data root."""

    classes: Sequence[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess: Preprocess
    read: Callable[[Path], tuple[ImageSet, ImageSet, ImageSet]]
    held_out: str = ""


_VAL_SIZE = 5000
_HELD_OUT = f"seed {SPLIT_SEED}"


def _held_out(train: ImageSet, test: ImageSet) -> tuple[ImageSet, ImageSet, ImageSet]:
    train, val = train.split(_VAL_SIZE, seed=SPLIT_SEED)
    return train, val, test


def _read_mnist(variant: str) -> Callable[[Path], tuple[ImageSet, ImageSet, ImageSet]]:
    def read(root: Path) -> tuple[ImageSet, ImageSet, ImageSet]:
        from .mnist import load_mnist

        return _held_out(load_mnist("train", root, variant=variant), load_mnist("test", root, variant=variant))

    return read


def _read_cifar10(root: Path) -> tuple[ImageSet, ImageSet, ImageSet]:
    from .cifar10 import load_cifar10

    return _held_out(load_cifar10("train", root), load_cifar10("test", root))


#: Omniglot's classification view: drawings [start, stop) of every background character per split.
OMNIGLOT_DRAWINGS = {"train": (0, 14), "val": (14, 16), "test": (16, 20)}


def _read_omniglot(root: Path) -> tuple[ImageSet, ImageSet, ImageSet]:
    from .omniglot import load_omniglot

    background = load_omniglot(root).background
    pool = background.class_pool()  # (characters, 20, 1, 28, 28)

    def drawings(start: int, stop: int) -> ImageSet:
        images = pool.images[:, start:stop]
        labels = torch.arange(len(pool.classes)).repeat_interleave(stop - start)
        return ImageSet(images.reshape(-1, *images.shape[2:]).contiguous(), labels, list(pool.classes),
                        background.source)

    train, val, test = (drawings(*OMNIGLOT_DRAWINGS[split]) for split in ("train", "val", "test"))
    return train, val, test


def _builtins() -> dict[str, _Builtin]:
    from . import cifar10, mnist, omniglot

    mnist_l = Preprocess("L", (28, 28))
    return {
        "mnist": _Builtin(mnist.CLASSES, mnist.MEAN, mnist.STD, mnist_l, _read_mnist("mnist"),
                          _HELD_OUT),
        "fashion-mnist": _Builtin(mnist.FASHION_CLASSES, mnist.FASHION_MEAN, mnist.FASHION_STD, mnist_l,
                                  _read_mnist("fashion-mnist"), _HELD_OUT),
        "cifar10": _Builtin(cifar10.CLASSES, cifar10.MEAN, cifar10.STD, Preprocess("RGB", (32, 32)), _read_cifar10,
                            _HELD_OUT),
        "omniglot": _Builtin((), omniglot.MEAN, omniglot.STD, Preprocess("L", (28, 28), "lanczos", invert=True),
                             _read_omniglot),
    }


#: The built-in datasets' names.
NAMES = ("mnist", "fashion-mnist", "cifar10", "omniglot")


@functools.lru_cache(maxsize=2)
def _read_builtin(name: str, root: Path) -> ImageData:
    """A built-in dataset, read once per process and data root (reports build a task several times)."""
    spec = _builtins()[name]
    train, val, test = spec.read(root)
    info = DataInfo(name, tuple(train.classes), spec.mean, spec.std, spec.preprocess)
    return ImageData(info, {"train": train, "val": val, "test": test}, train.source, spec.held_out)


class BuiltinDataset(Dataset):
    """``mnist``, ``fashion-mnist``, ``cifar10`` or ``omniglot`` under a data root."""

    def __init__(self, name: str, root: str | os.PathLike | None = None) -> None:
        if name not in NAMES:
            raise ValueError(f"unknown dataset {name!r}; built-in datasets: {', '.join(NAMES)}")
        self.name, self.root = name, root

    @property
    def spec(self) -> dict[str, Any]:
        return {"name": self.name}

    @property
    def info(self) -> DataInfo:
        """Known without loading; Omniglot's classes are not (its characters are listed in its zips,
        :meth:`load` gives them)."""
        spec = _builtins()[self.name]
        return DataInfo(self.name, tuple(spec.classes), spec.mean, spec.std, spec.preprocess)

    def load(self) -> ImageData:
        return _read_builtin(self.name, data_root(self.root))


# --------------------------------------------------------------------------- image folders


class FolderDataset(Dataset):
    """An image folder (see :mod:`onebit.data.imagefolder`), read on every :meth:`load` (from its
    cache when nothing changed)."""

    def __init__(self, path: str | os.PathLike, *, image_size: int | Sequence[int] | None = None,
                 val_fraction: float | None = None) -> None:
        self.path = Path(path).expanduser().absolute()
        self.name = str(self.path)
        self.image_size = None if image_size is None else image_shape(image_size)
        if val_fraction is not None and not 0 < val_fraction < 1:
            raise ValueError(f"the validation fraction must be between 0 and 1, got {val_fraction}")
        self.val_fraction = val_fraction

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name}
        if self.image_size is not None:
            spec["image_size"] = list(self.image_size)
        if self.val_fraction is not None:
            spec["val_fraction"] = self.val_fraction
        return spec

    @property
    def info(self) -> DataInfo:
        return self.load().info

    def load(self) -> ImageData:
        folder = load_image_folder(self.path, self.image_size)
        splits = dict(folder.splits)
        held_out = ""
        if "val" in splits and self.val_fraction is not None:
            raise ValueError(f"{self.path} has a val/ folder: a validation fraction applies only to folders "
                             "without one")
        if "val" not in splits:
            fraction = VAL_FRACTION if self.val_fraction is None else self.val_fraction
            train = splits["train"]
            size = max(1, math.floor(len(train) * fraction + 0.5))
            if size >= len(train):
                raise ValueError(f"{self.path / 'train'} has {len(train)} images, too few to hold out a validation "
                                 f"split: add images, or a val/ folder")
            splits["train"], splits["val"] = train.split(size, seed=SPLIT_SEED)
            held_out = f"{fraction:.0%}, seed {SPLIT_SEED}"
        mean, std = channel_stats(splits["train"].images)
        info = DataInfo(self.name, tuple(folder.classes), mean, std, folder.preprocess)
        order = {split: splits[split] for split in ("train", "val", "test") if split in splits}
        return ImageData(info, order, folder.source, held_out)


# --------------------------------------------------------------------------- the loader


def dataset(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None, *,
            image_size: int | Sequence[int] | None = None, val_fraction: float | None = None) -> Dataset:
    """The dataset called ``name_or_path``: a built-in name (:data:`NAMES`) or an image folder.

    Args:
        name_or_path: ``mnist``, ``fashion-mnist``, ``cifar10``, ``omniglot``, or a folder.
        root: data root of the built-in datasets (default: ``$ONEBIT_DATA``, then the per-user
            cache; see :func:`~onebit.data.data_root`).
        image_size: an image folder's size (int or ``(height, width)``; default: the size its
            images share).
        val_fraction: the part of an image folder's ``train/`` held out for validation when it has
            no ``val/`` (default :data:`VAL_FRACTION`).

    Raises:
        DatasetNotFoundError: neither a built-in name nor an existing folder.
        ValueError: an option the dataset does not take.
    """
    name = os.fspath(name_or_path)
    if name in NAMES:
        if image_size is not None or val_fraction is not None:
            raise ValueError(f"{name} has a fixed image size and validation split: --image-size and the "
                             f"validation fraction apply to image folders")
        return BuiltinDataset(name, root)
    if not Path(name).expanduser().is_dir():
        raise DatasetNotFoundError(f"unknown dataset {name!r}: neither a built-in dataset ({', '.join(NAMES)}) nor "
                                   f"an image folder (no folder {Path(name).expanduser().absolute()})")
    return FolderDataset(name, image_size=image_size, val_fraction=val_fraction)


def from_spec(spec: dict[str, Any], root: str | os.PathLike | None = None) -> Dataset:
    """The dataset a run config's ``data`` entry (:attr:`Dataset.spec`) names."""
    options = {k: v for k, v in spec.items() if k != "name"}
    return dataset(spec["name"], root, **options)
