"""Model zoo. :func:`build` constructs a model from the name and arguments in a run config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .._shape import image_shape
from .cifar import BiRealResNet, VGGSmall
from .matching_net import MatchingNetwork, PrototypicalNetwork
from .mcu_cnn import McuCNN
from .mlp import MLP
from .small_cnn import SmallCNN

__all__ = [
    "BiRealResNet", "CLASSIFIERS", "MLP", "MatchingNetwork", "McuCNN", "PrototypicalNetwork", "SmallCNN", "VGGSmall",
    "build", "image_shape", "names",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "small_cnn": SmallCNN,
    "mcu_cnn": McuCNN,
    "vgg_small": VGGSmall,
    "bireal_resnet": BiRealResNet,
    "matching_net": MatchingNetwork,
    "protonet": PrototypicalNetwork,
}


#: Image classifiers: each takes ``recipe``, ``in_channels``, ``num_classes`` and ``image_size``
#: (an int for square images or ``(height, width)``), so ``onebit train`` builds any of them for
#: the data it is given.
CLASSIFIERS = ("mlp", "small_cnn", "mcu_cnn", "vgg_small", "bireal_resnet")


def names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` with constructor arguments ``kwargs``."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(names())}")
    return _MODELS[name](**kwargs)
