"""Test sets as normalized numpy arrays, for evaluating packed models (``onebit infer``)."""

from __future__ import annotations

import numpy as np

__all__ = ["test_arrays", "NAMES"]

NAMES = ("mnist", "cifar10")


def test_arrays(name: str, root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The test split of dataset ``name``, normalized exactly as the training task does.

    Returns:
        ``(images, labels)``: float32 ``(N, C, H, W)`` and int64 ``(N,)``.
    """
    if name == "mnist":
        from ..data.mnist import MEAN, STD, load_mnist

        data = load_mnist("test", root)
    elif name == "cifar10":
        from ..data.cifar10 import MEAN, STD, load_cifar10

        data = load_cifar10("test", root)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
    mean = np.asarray(MEAN, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(STD, np.float32).reshape(1, -1, 1, 1)
    images = (data.images.numpy().astype(np.float32) / 255 - mean) / std
    return images, data.labels.numpy()
