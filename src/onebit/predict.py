"""A packed model's predictions on image files (``onebit infer --images``).

A ``.onebit`` file exported from a trained run records its class names (``meta["classes"]``)
and how its training images were decoded (``meta["preprocess"]``: channels, size, resampling);
:func:`predict_files` decodes new images the same way and runs the model on their uint8 pixels.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data.decode import IMAGE_SUFFIXES, Preprocess, image_files, read_image

if TYPE_CHECKING:
    from .deploy import PackedModel

__all__ = ["Prediction", "model_classes", "model_preprocess", "find_images", "predict_files"]


def _info(meta: dict):
    """The built-in dataset a model file names, for files exported before they recorded classes
    (imported here: the data loaders import torch, which decoding image files does not need)."""
    from .data.datasets import NAMES, dataset

    return dataset(meta["dataset"]).info if meta.get("dataset") in NAMES else None


def model_classes(meta: dict) -> list[str]:
    """The class names a packed model's outputs stand for."""
    classes = meta.get("classes") or (_info(meta).classes if _info(meta) else None)
    if not classes:
        raise ValueError("the model file names no classes (an encoder, or a file exported before files recorded "
                         "them): export the trained run again with `onebit export`")
    return list(classes)


def model_preprocess(meta: dict) -> Preprocess:
    """How images become the packed model's inputs."""
    if "preprocess" in meta:
        return Preprocess.from_json(meta["preprocess"])
    if _info(meta) is None:
        raise ValueError("the model file does not say how its images were decoded: export the trained run again "
                         "with `onebit export`")
    return _info(meta).preprocess


def _labelled(folder: Path, classes: list[str]) -> list[tuple[Path, str | None]]:
    """Images directly in ``folder`` (no label) and in its class folders (labelled by the folder)."""
    found = [(p, None) for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    subfolders = {d.name: image_files(d) for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    subfolders = {name: files for name, files in subfolders.items() if files}
    named = [name for name in subfolders if name in classes]
    if named and len(named) < len(subfolders):
        others = [f"{name}/" for name in subfolders if name not in classes]
        raise ValueError(f"{folder} has class folders ({', '.join(n + '/' for n in named)}) and folders that are not "
                         f"classes of the model ({', '.join(others)}; its classes: {', '.join(classes)}): pass a "
                         "folder of class folders, or of images")
    for name, files in subfolders.items():
        found += [(p, name if named else None) for p in files]
    return found


def find_images(pattern: str | os.PathLike, classes: list[str]) -> list[tuple[Path, str | None]]:
    """``(image file, class name or None)`` for ``pattern``: a folder (its images, and those of its
    class folders ``pattern/<class>/``, labelled), a single image file, or a glob."""
    path = Path(pattern)
    if path.is_dir():
        found = _labelled(path, classes)
    elif path.is_file():
        found = [(path, None)]
    else:
        matches = sorted(glob.glob(os.fspath(pattern), recursive=True))
        if not matches and not glob.has_magic(os.fspath(pattern)):
            raise FileNotFoundError(f"no such image, folder or glob: {pattern}")
        found = [(Path(m), None) for m in matches if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {pattern}")
    return found


@dataclass
class Prediction:
    """The predicted class of one image file."""

    path: Path
    label: str | None  # the class folder it was found in, if any
    predicted: str
    score: float  # softmax probability of the predicted class


def predict_files(model: PackedModel, files: list[tuple[Path, str | None]], batch_size: int = 256) -> list[Prediction]:
    """Decode ``files`` as the model's training images were decoded and predict their classes."""
    classes, preprocess = model_classes(model.meta), model_preprocess(model.meta)
    if "input_quantization" not in model.meta:
        raise ValueError("the model file takes normalized float inputs only: export the trained run again with "
                         "`onebit export` (it records the normalization, so the model takes image pixels)")
    predictions = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        codes = np.stack([read_image(path, preprocess) for path, _ in chunk])
        logits = model(codes).astype(np.float64)
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        for (path, label), p in zip(chunk, probabilities, strict=True):
            k = int(p.argmax())
            predictions.append(Prediction(path, label, classes[k], float(p[k])))
    return predictions
