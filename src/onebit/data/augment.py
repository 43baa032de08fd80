"""Data augmentation on uint8 image batches, seeded by the trainer's generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["augment"]


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, vectorized over the batch.

    Each image is padded with ``padding`` zeros on every side, cropped back to its
    size at a uniformly random offset, and (with ``flip``) flipped left-right with
    probability 1/2, independently per image.

    Args:
        images: Tensor of shape ``(N, C, H, W)``, any dtype (e.g. ``uint8`` or ``float32``).
        generator: Source of randomness; the same generator state gives the same output.
        padding: Zero padding in pixels on each side; the maximal shift.
        flip: Also flip (CIFAR-10's objects); off for digits and characters, whose mirror
            images are other symbols.

    Returns:
        Tensor of the same shape, dtype and device as ``images``.
    """
    n, c, h, w = images.shape
    device = images.device

    def draw(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n, 1), generator=generator, device=generator.device).to(device)

    top, left = draw(2 * padding + 1), draw(2 * padding + 1)
    rows = top + torch.arange(h, device=device)  # (N, H) rows of the padded image
    cols = left + torch.arange(w, device=device)  # (N, W)
    if flip:
        cols = torch.where(draw(2).bool(), cols.flip(1), cols)
    padded = F.pad(images, (padding, padding, padding, padding))
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
