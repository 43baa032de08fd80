"""Bit-packed deployment: convert a trained model, save it, run it with numpy only.

``load`` and :class:`PackedModel` never import torch; ``convert`` (which reads a PyTorch
model) does, and is imported on first use.
"""

from .fileformat import InvalidModelFile
from .runtime import PackedModel, load

__all__ = ["convert", "load", "PackedModel", "InvalidModelFile", "UnsupportedModelError"]


def __getattr__(name: str):
    if name in ("convert", "UnsupportedModelError"):
        from . import converter

        return getattr(converter, name)
    raise AttributeError(f"module 'onebit.deploy' has no attribute {name!r}")
