"""Image sizes as the classifiers take them."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["image_shape"]


def image_shape(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of ``image_size``: an int (square images) or a pair."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif isinstance(image_size, Sequence) and not isinstance(image_size, str) and len(image_size) == 2:
        size = tuple(image_size)
    else:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ValueError(f"image_size must be positive integers, got {image_size!r}")
    return size
