"""Data augmentation on uint8 image batches, seeded by the trainer's generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["augment"]


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True,
            cutout: int = 0) -> torch.Tensor:
    """Random crop with zero padding, random horizontal flip and cutout, vectorized over the batch.

    Each image is padded with ``padding`` zeros on every side, cropped back to its
    size at a uniformly random offset, (with ``flip``) flipped left-right with
    probability 1/2, and (with ``cutout``) has a ``cutout`` x ``cutout`` square set to zero
    whose centre is uniform over the image, so that near a border only part of the square
    lies inside it (DeVries and Taylor 2017), independently per image.

    Args:
        images: Tensor of shape ``(N, C, H, W)``, any dtype (e.g. ``uint8`` or ``float32``).
        generator: Source of randomness; the same generator state gives the same output.
        padding: Zero padding in pixels on each side; the maximal shift.
        flip: Also flip (CIFAR-10's objects); off for digits and characters, whose mirror
            images are other symbols.
        cutout: Side in pixels of the zeroed square; 0 for none. The square is zeroed in the
            pixels given (black in uint8 images, before normalization), where DeVries and
            Taylor zero normalized images (the dataset mean).

    Returns:
        Tensor of the same shape, dtype and device as ``images``.
    """
    if padding < 0 or cutout < 0:
        raise ValueError(f"padding and cutout must be >= 0 pixels, got padding={padding}, cutout={cutout}")
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
    out = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    if cutout:
        def inside(size: int) -> torch.Tensor:  # (N, size): which rows (columns) the square covers
            start = draw(size) - cutout // 2  # the square's first row, possibly outside the image
            index = torch.arange(size, device=device)
            return (index >= start) & (index < start + cutout)

        square_rows, square_cols = inside(h), inside(w)
        out = out.masked_fill(square_rows[:, None, :, None] & square_cols[:, None, None, :], 0)
    return out
