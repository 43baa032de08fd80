"""Datasets: locating, downloading, verifying and decoding them into in-memory tensors."""

from .augment import augment
from .cifar10 import load_cifar10
from .download import CorruptDatasetError, DatasetNotFoundError, Resource, data_root, fetch
from .episodes import ClassPool, Episode, EpisodeSampler
from .imageset import ImageSet
from .mnist import load_mnist
from .omniglot import LakeRun, OmniglotData, OmniglotPart, load_lake_runs, load_omniglot, omniglot_splits

__all__ = [
    "ClassPool",
    "CorruptDatasetError",
    "DatasetNotFoundError",
    "Episode",
    "EpisodeSampler",
    "ImageSet",
    "LakeRun",
    "OmniglotData",
    "OmniglotPart",
    "Resource",
    "augment",
    "data_root",
    "fetch",
    "load_cifar10",
    "load_lake_runs",
    "load_mnist",
    "load_omniglot",
    "omniglot_splits",
]
