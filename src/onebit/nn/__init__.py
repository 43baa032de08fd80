"""Binary layers and activations, in the style of :mod:`torch.nn`."""

from .activations import HardSigmoid
from .layers import BinaryConv2d, BinaryLinear, QuantizedLayer, clip_latent_weights

__all__ = ["BinaryLinear", "BinaryConv2d", "QuantizedLayer", "HardSigmoid", "clip_latent_weights"]
