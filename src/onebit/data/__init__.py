"""Datasets: locating, downloading, verifying and decoding them into in-memory tensors."""

from .cifar10 import augment, load_cifar10
from .download import CorruptDatasetError, DatasetNotFoundError, Resource, data_root, fetch
from .imageset import ImageSet
from .mnist import load_mnist

__all__ = [
    "CorruptDatasetError",
    "DatasetNotFoundError",
    "ImageSet",
    "Resource",
    "augment",
    "data_root",
    "fetch",
    "load_cifar10",
    "load_mnist",
]
