"""Test sets as numpy arrays, for evaluating packed models (``onebit infer``)."""

from __future__ import annotations

import numpy as np

__all__ = ["normalization", "test_arrays", "NAMES"]

NAMES = ("mnist", "cifar10")


def normalization(name: str | None, *, missing_ok: bool = False) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` per channel, in [0, 1] pixel units, that training normalizes ``name`` with;
    with ``missing_ok``, ``None`` for datasets without a test set here (e.g. Omniglot)."""
    if missing_ok and name not in NAMES:
        return None
    if name == "mnist":
        from ..data.mnist import MEAN, STD
    elif name == "cifar10":
        from ..data.cifar10 import MEAN, STD
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
    return tuple(MEAN), tuple(STD)


def test_arrays(name: str, root: str | None = None, *, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The test split of dataset ``name``.

    Returns:
        ``(images, labels)``: images ``(N, C, H, W)``, float32 normalized exactly as the training
        task does, or the uint8 pixels with ``raw=True``; labels int64 ``(N,)``.
    """
    mean, std = normalization(name)
    if name == "mnist":
        from ..data.mnist import load_mnist as load
    else:
        from ..data.cifar10 import load_cifar10 as load
    data = load("test", root)
    images = data.images.numpy()
    if not raw:
        mean_ = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
        std_ = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
        images = (images.astype(np.float32) / 255 - mean_) / std_
    return images, data.labels.numpy()
