"""Datasets: locating, downloading, verifying and decoding them into in-memory tensors.

:func:`dataset` is the one loader: a built-in dataset by name or an image folder by path.

Names and submodules load lazily: :mod:`onebit.data.decode` (image files into uint8 arrays,
used by ``onebit infer --images``) imports no torch, and importing it does not import the rest.
"""

from __future__ import annotations

import importlib

#: Each public name and the submodule that defines it.
_ATTRIBUTES = {
    "augment": "augmentation",
    "load_cifar10": "cifar10",
    "DataInfo": "datasets",
    "Dataset": "datasets",
    "ImageData": "datasets",
    "dataset": "datasets",
    "IMAGE_SUFFIXES": "decode",
    "Preprocess": "decode",
    "read_image": "decode",
    "CorruptDatasetError": "download",
    "DatasetNotFoundError": "download",
    "Resource": "download",
    "data_root": "download",
    "fetch": "download",
    "ClassPool": "episodes",
    "Episode": "episodes",
    "EpisodeSampler": "episodes",
    "load_image_folder": "imagefolder",
    "ImageSet": "imageset",
    "load_mnist": "mnist",
    "LakeRun": "omniglot",
    "OmniglotData": "omniglot",
    "OmniglotPart": "omniglot",
    "load_lake_runs": "omniglot",
    "load_omniglot": "omniglot",
    "omniglot_splits": "omniglot",
}

__all__ = sorted(_ATTRIBUTES)


def __getattr__(name: str):
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(f"{__name__}.{_ATTRIBUTES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
