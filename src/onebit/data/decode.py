"""Image files decoded into model inputs: uint8 ``(C, H, W)`` arrays, with numpy and Pillow only.

:class:`Preprocess` says how (color mode, size, resampling filter, inversion); a dataset's
loader records it and a packed model keeps it, so that ``onebit infer --images`` decodes new
files as the training images were decoded without importing torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .download import CorruptDatasetError

__all__ = ["IMAGE_SUFFIXES", "Preprocess", "image_files", "read_image"]

#: Suffixes of the image files an image folder's class folders are searched for (any letter case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "lanczos": Image.Resampling.LANCZOS}
#: What Pillow raises for a file it cannot decode as an image.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input: what a dataset's loader did to its images, kept
    with a trained model so that ``onebit infer --images`` does the same to new ones.

    Attributes:
        mode: ``"L"`` (one channel) or ``"RGB"`` (three); other Pillow modes are converted.
        size: ``(height, width)`` the image is resized to (when it has another size).
        resample: ``"bilinear"`` or ``"lanczos"`` (Pillow's filters; both antialias when shrinking).
        invert: ``255 - pixel`` after resizing (Omniglot: strokes bright on black).
    """

    mode: str
    size: tuple[int, int]
    resample: str = "bilinear"
    invert: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' or 'RGB', got {self.mode!r}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {', '.join(_RESAMPLE)}, got {self.resample!r}")
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))

    @property
    def channels(self) -> int:
        """The number of channels of the arrays: 1 for ``"L"``, 3 for ``"RGB"``."""
        return 1 if self.mode == "L" else 3

    def to_json(self) -> dict:
        """The record a packed model's ``meta["preprocess"]`` and a run's ``data.json`` keep."""
        return {"mode": self.mode, "size": list(self.size), "resample": self.resample, "invert": self.invert}

    @classmethod
    def from_json(cls, record: dict) -> Preprocess:
        """The :class:`Preprocess` of a :meth:`to_json` record (older records lack the defaults)."""
        return cls(record["mode"], tuple(record["size"]), record.get("resample", "bilinear"),
                   record.get("invert", False))

    def apply(self, image: Image.Image) -> np.ndarray:
        """The ``(C, H, W)`` uint8 array of a decoded Pillow image."""
        image = image.convert(self.mode)
        height, width = self.size
        if image.size != (width, height):
            image = image.resize((width, height), _RESAMPLE[self.resample])
        pixels = np.asarray(image, dtype=np.uint8)
        if self.invert:
            pixels = 255 - pixels
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def unreadable_image_error(path: Path, error: BaseException) -> CorruptDatasetError:
    """The error for an image file Pillow cannot decode: it names the file and the fix."""
    return CorruptDatasetError(f"cannot read {path} as an image ({error}): replace it with a valid PNG, JPEG or BMP "
                               f"file, or delete it")


def read_image(path: str | os.PathLike, preprocess: Preprocess) -> np.ndarray:
    """Decode the image file ``path`` into a ``(C, H, W)`` uint8 array as ``preprocess`` says.

    Raises:
        CorruptDatasetError: the file is not an image Pillow can decode (the message names it).
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            return preprocess.apply(image)
    except DECODE_ERRORS as error:
        raise unreadable_image_error(path, error) from error


def image_files(directory: Path) -> list[Path]:
    """The image files below ``directory`` (sorted; hidden files and folders left out)."""
    found = []
    for folder, subfolders, files in os.walk(directory):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [Path(folder) / f for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)
