"""Datasets: locating, downloading, verifying and decoding them into in-memory tensors.

:func:`dataset` is the one loader: a built-in dataset by name or an image folder by path.
"""

from .augment import augment
from .cifar10 import load_cifar10
from .datasets import DataInfo, Dataset, ImageData, dataset
from .download import CorruptDatasetError, DatasetNotFoundError, Resource, data_root, fetch
from .episodes import ClassPool, Episode, EpisodeSampler
from .imagefolder import Preprocess, load_image_folder, read_image
from .imageset import ImageSet
from .mnist import load_mnist
from .omniglot import LakeRun, OmniglotData, OmniglotPart, load_lake_runs, load_omniglot, omniglot_splits

__all__ = [
    "ClassPool",
    "CorruptDatasetError",
    "DataInfo",
    "Dataset",
    "DatasetNotFoundError",
    "Episode",
    "EpisodeSampler",
    "ImageData",
    "ImageSet",
    "LakeRun",
    "OmniglotData",
    "OmniglotPart",
    "Preprocess",
    "Resource",
    "augment",
    "data_root",
    "dataset",
    "fetch",
    "load_cifar10",
    "load_image_folder",
    "load_lake_runs",
    "load_mnist",
    "load_omniglot",
    "omniglot_splits",
    "read_image",
]
