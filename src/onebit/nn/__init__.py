"""Binary layers and activations, in the style of :mod:`torch.nn`."""

from .activations import HardSigmoid, LearnableBias, RPReLU
from .layers import BinaryConv2d, BinaryLinear, QuantizedLayer, clip_latent_weights, computing_layers

__all__ = ["BinaryLinear", "BinaryConv2d", "QuantizedLayer", "HardSigmoid", "LearnableBias", "RPReLU",
           "clip_latent_weights", "computing_layers"]
