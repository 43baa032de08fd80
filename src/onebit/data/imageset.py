"""An in-memory labelled image dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

__all__ = ["ImageSet"]


@dataclass
class ImageSet:
    """Images and integer labels held in memory as tensors.

    Args:
        images: ``uint8`` tensor of shape ``(N, C, H, W)``, pixel values 0..255.
        labels: ``int64`` tensor of shape ``(N,)``, values in ``[0, len(classes))``.
        classes: Class names; ``classes[k]`` is the name of label ``k``.
        source: Which copy of the dataset the images came from, e.g.
            ``"cifar10-jpg.tar.gz (lossy JPEG re-encode)"``. Report it with every figure.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be a uint8 tensor of shape (N, C, H, W), got "
                f"{self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(
                f"labels must be an int64 tensor of shape ({len(self.images)},), got "
                f"{self.labels.dtype} of shape {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageSet:
        """Return the samples at ``indices`` (a copy), keeping classes and source.

        Args:
            indices: Integer indices (list or 1-D ``int64`` tensor) or a boolean mask of length N.

        Returns:
            An :class:`ImageSet` with ``len(indices)`` samples, in the order given.
        """
        index = torch.as_tensor(indices)
        if index.dtype != torch.bool:
            index = index.long()
        return replace(self, images=self.images[index], labels=self.labels[index])

    def split(self, val_size: int, seed: int) -> tuple[ImageSet, ImageSet]:
        """Split off a random validation set.

        The split is a seeded random permutation, so it is the same on every run and
        every machine for the same ``seed``. Both parts keep the original sample order.

        Args:
            val_size: Number of samples in the validation part, ``0 <= val_size <= N``.
            seed: Seed of the permutation.

        Returns:
            ``(train, val)``: disjoint subsets with ``N - val_size`` and ``val_size`` samples.
        """
        if not 0 <= val_size <= len(self):
            raise ValueError(f"val_size must be in [0, {len(self)}], got {val_size}")
        generator = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=generator)
        val_idx, _ = perm[:val_size].sort()
        train_idx, _ = perm[val_size:].sort()
        return self.subset(train_idx), self.subset(val_idx)
