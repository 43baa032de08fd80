"""Model zoo. :func:`build` constructs a model from the name and arguments in a run config."""

from __future__ import annotations

from typing import Callable

from torch import nn

from .mlp import MLP
from .small_cnn import SmallCNN

__all__ = ["MLP", "SmallCNN", "build", "names"]

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "small_cnn": SmallCNN,
}


def names() -> list[str]:
    return sorted(_MODELS)


def build(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` with constructor arguments ``kwargs``."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(names())}")
    return _MODELS[name](**kwargs)
